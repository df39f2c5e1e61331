// The story end to end in a real browser: the Django example (examples/django_progress, a real
// Django from PyPI, no Channels) next to wsgate, driven by Debian's chromium. An upload by
// fetch() and one by a classic form POST (which replaces the page while the view publishes):
// in both, every progress line and the summary end up on the page, once each, in order.
//
//   node conformance/browser/django.mjs http://127.0.0.1:DJANGO_PORT XLSX_PATH CSV_PATH CSV_ROWS
//
// (run-django.sh starts wsgate and Django and makes the files.) Closes with
// "browser (django): N passed, N failed".

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { assert, finish, runTests, startWatchdog, uid, withTimeout } from './harness.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, '..', '..');
const [BASE, XLSX, CSV, CSV_ROWS] = process.argv.slice(2);
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const OUT_DIR = resolve(REPO, process.env.WSGATE_BROWSER_OUT || 'target/test-output/browser');
const OPEN_MS = 10_000;
const DONE_MS = 20_000;
const TEST_MS = 45_000;
const RUN_MS = 120_000;

if (!BASE || !XLSX || !CSV || !CSV_ROWS) {
  console.error('usage: node django.mjs http://127.0.0.1:PORT XLSX_PATH CSV_PATH CSV_ROWS');
  process.exit(2);
}
startWatchdog('django.mjs', 'browser (django)', RUN_MS);


// What the example's view publishes for a sheet with these (name, amount) rows.
function expected(rows) {
  const total = rows.reduce((s, [, a]) => s + a, 0);
  return ['正在打开数据...', ...rows.map(([n, a], i) => `row ${i + 1}/${rows.length}: ${n} (${a})`),
    `完成: ${rows.length} rows, total ${total}`];
}
// The XLSX made by run-django.sh.
const XLSX_ROWS = [['apples', 3], ['pears', 4.5], ['plums', 10], ['figs', 0.25]];
// The CSV made by run-django.sh: big (over Django's 2.5 MB in-memory upload limit and the story's
// in-memory channel layer), only its names and amounts go to wsgate.
const CSV_ROWS_LIST = Array.from({ length: Number(CSV_ROWS) }, (_, i) => [`item${i + 1}`, i + 1]);

let browser, context;
const logs = [];

async function openPage(room) {
  const page = await context.newPage();
  page.on('console', (m) => logs.push(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  page.on('websocket', (ws) => logs.push(`websocket: ${ws.url()}`));
  const resp = await page.goto(`${BASE}/?room=${room}`, { waitUntil: 'domcontentloaded', timeout: OPEN_MS });
  assert(resp && resp.ok(), `the page answered ${resp ? resp.status() : 'nothing'}`);
  await page.waitForFunction(() => document.querySelector('#state')?.textContent === 'open', null, { timeout: OPEN_MS, polling: 50 });
  return page;
}

async function linesWhenDone(page, what) {
  try {
    await page.waitForFunction(() => document.querySelector('#log')?.dataset.done === '1', null, { timeout: DONE_MS, polling: 50 });
  } catch (e) {
    const seen = await page.$$eval('#log li', (els) => els.map((x) => x.textContent)).catch(() => []);
    throw new Error(`${what}: the summary never showed; lines seen: ${JSON.stringify(seen.slice(-8))}; ${logs.slice(-8).join(' | ')}`);
  }
  // Anything late (a duplicate) would land now.
  await new Promise((r) => setTimeout(r, 300));
  return page.$$eval('#log li', (els) => els.map((x) => x.textContent));
}

function assertExactly(lines, want, what) {
  assert(JSON.stringify(lines) === JSON.stringify(want),
    `${what}: lines on the page differ from what the view published, once each and in order.\n  got:  ${JSON.stringify(lines)}\n  want: ${JSON.stringify(want)}`);
}

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

test('an XLSX uploaded by fetch() shows every progress line and the summary, once each, in order', async () => {
  const page = await openPage(uid('fetch'));
  await page.setInputFiles('#fetch-file', XLSX);
  await page.click('#fetch-go');
  const lines = await linesWhenDone(page, 'fetch upload');
  assertExactly(lines, expected(XLSX_ROWS), 'fetch upload');
  await page.waitForFunction(() => document.querySelector('#fetch-result').textContent.startsWith('完成'), null, { timeout: OPEN_MS });
  mkdirSync(OUT_DIR, { recursive: true });
  await page.screenshot({ path: join(OUT_DIR, 'django-fetch.png'), fullPage: true });
  await page.close();
});

test('a big CSV uploaded by a classic form POST: the new page shows every line and the summary, once each, in order', async () => {
  const page = await openPage(uid('form'));
  await page.setInputFiles('#classic-file', CSV);
  // The view publishes while this page waits for its answer; the answer replaces the page,
  // whose new socket joins after the last publish: wsgate replays what it missed.
  await Promise.all([page.waitForNavigation({ timeout: DONE_MS }), page.click('#classic-go')]);
  assert(page.url().endsWith('/upload/'), `the form POST replaced the page (at ${page.url()})`);
  await page.waitForFunction(() => document.querySelector('#state')?.textContent === 'open', null, { timeout: OPEN_MS, polling: 50 });
  const lines = await linesWhenDone(page, 'form POST');
  assertExactly(lines, expected(CSV_ROWS_LIST), 'form POST');
  mkdirSync(OUT_DIR, { recursive: true });
  await page.screenshot({ path: join(OUT_DIR, 'django-form.png'), fullPage: true });
  await page.close();
});

try {
  browser = await withTimeout(chromium.launch({
    executablePath: CHROMIUM, headless: true, timeout: 30_000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
  }), 40_000, `launching ${CHROMIUM}`);
  context = await browser.newContext({ viewport: { width: 900, height: 900 } });
} catch (e) {
  console.log(`not ok - launch chromium: ${e.message}`);
  console.log(`browser (django): 0 passed, ${tests.length} failed`);
  process.exit(1);
}
const [passed, failed] = await runTests(tests, TEST_MS);
await finish(browser, 'browser (django)', passed, failed);
