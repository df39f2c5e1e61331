// Real-browser test of WebSockets over HTTP/2 (RFC 8441 extended CONNECT): Debian's chromium,
// driven by playwright-core, loads the demo page from `wsgate serve` over https (h2 by ALPN),
// and its WebSocket must run as a stream of that HTTP/2 connection, which only the server can
// tell: /metrics (`wsgate_ws_opened_total{via="hub",http_version="2"}`) and the access log.
//
//   node conformance/browser/h2.mjs https://127.0.0.1:PORT SPKI_SHA256_BASE64
//
// (h2.sh makes the certificates, starts the server and calls this, with NODE_EXTRA_CA_CERTS
// set to the test CA for node's own requests and WSGATE_SERVER_LOG to the server's log.)
// Closes with the line "browser-h2: N passed, N failed"; exit code 0 only when every test passed.

import { chromium } from 'playwright-core';
import { mkdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { assert, finish, runTests, startWatchdog, uid, withTimeout } from './harness.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, '..', '..');
const BASE = (process.argv[2] || '').replace(/\/+$/, '');
const SPKI = process.argv[3] || '';
const SERVER_LOG = process.env.WSGATE_SERVER_LOG || '';
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const OUT_DIR = resolve(REPO, process.env.WSGATE_BROWSER_OUT || 'target/test-output/browser');
const SCREENSHOT = join(OUT_DIR, 'h2-demo.png');

const OPEN_MS = 10_000;      // page load + WebSocket open
const ARRIVE_MS = 5_000;     // a message shows up on the page
const HTTP_MS = 5_000;       // one request from node
const TEST_MS = 45_000;      // one whole test
const RUN_MS = 150_000;      // the whole run

if (!BASE.startsWith('https://') || !SPKI) {
  console.error('usage: node h2.mjs https://127.0.0.1:PORT SPKI_SHA256_BASE64');
  process.exit(2);
}

startWatchdog('h2.mjs', 'browser-h2', RUN_MS);

const ROOM = uid('h2');

// `wsgate_ws_opened_total` by (via, http_version), from /metrics (node fetches over HTTP/1.1).
async function opened() {
  const res = await fetch(`${BASE}/metrics`, { signal: AbortSignal.timeout(HTTP_MS) });
  const raw = await res.text();
  assert(res.ok, `GET /metrics answered ${res.status}`);
  const out = {};
  for (const line of raw.split('\n')) {
    const m = line.match(/^wsgate_ws_opened_total\{([^}]*)\} (\d+)$/);
    if (!m) continue;
    const labels = Object.fromEntries([...m[1].matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    out[`${labels.via}/${labels.http_version}`] = Number(m[2]);
  }
  return out;
}
const count = (m, via, v) => m[`${via}/${v}`] || 0;

async function publish(room, body) {
  const url = `${BASE}/api/groups/${encodeURIComponent(`room:${room}`)}/messages`;
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'Content-Type': 'text/plain; charset=utf-8' },
    body,
    signal: AbortSignal.timeout(HTTP_MS),
  });
  const raw = await res.text();
  let json = null;
  try { json = JSON.parse(raw); } catch { /* reported below */ }
  assert(res.ok && json && json.recipients >= 1, `POST ${url} answered ${res.status}: ${raw.slice(0, 300)}`);
}

let browser;
let context;
let page;
const logs = [];

async function waitMessage(text) {
  try {
    await page.waitForFunction(
      (t) => [...document.querySelectorAll('#messages .msg')].some((e) => e.textContent.includes(t)),
      text, { timeout: ARRIVE_MS, polling: 50 });
  } catch {
    throw new Error(`message ${JSON.stringify(text)} did not appear within ${ARRIVE_MS} ms`);
  }
}

const tests = [];
const test = (name, fn) => tests.push({ name, fn });
let before = {};

test('a. Chromium loads the demo page over HTTP/2 and its WebSocket opens', async () => {
  before = await opened();
  page = await context.newPage();
  page.on('console', (m) => logs.push(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  page.on('requestfailed', (r) => logs.push(`requestfailed: ${r.method()} ${r.url()} ${r.failure()?.errorText ?? ''}`));
  page.on('websocket', (ws) => {
    logs.push(`websocket: created ${ws.url()}`);
    ws.on('close', () => logs.push(`websocket: closed ${ws.url()}`));
    ws.on('socketerror', (e) => logs.push(`websocket: error ${e}`));
  });
  const url = `${BASE}/?room=${encodeURIComponent(ROOM)}`;
  const resp = await page.goto(url, { waitUntil: 'domcontentloaded', timeout: OPEN_MS });
  assert(resp && resp.ok(), `GET ${url} answered ${resp ? resp.status() : 'nothing'}`);
  // The page itself came over h2 (ALPN), on the connection the WebSocket should then share.
  const proto = await page.evaluate(() => performance.getEntriesByType('navigation')[0]?.nextHopProtocol);
  assert(proto === 'h2', `the page was loaded over ${JSON.stringify(proto)}, not h2`);
  await page.waitForFunction(() => document.querySelector('#state')?.textContent === 'open',
    null, { timeout: OPEN_MS, polling: 100 });
  const wsUrl = await page.textContent('#ws-url');
  const expected = `${BASE.replace(/^https/, 'wss')}/room/${encodeURIComponent(ROOM)}/`;
  assert(wsUrl === expected, `#ws-url shows ${JSON.stringify(wsUrl)}, expected ${JSON.stringify(expected)}`);
});

test('b. messages cross the socket both ways: a publish reaches the page, the page\'s own send comes back', async () => {
  const text = uid('api-post');
  await publish(ROOM, text);
  await waitMessage(text);
  const mine = uid('from-page');
  await page.fill('#send-text', mine);
  await page.click('#send');
  await waitMessage(mine);
});

test('c. the server saw the WebSocket as an HTTP/2 stream (metrics and access log)', async () => {
  const after = await opened();
  const h2 = count(after, 'hub', '2') - count(before, 'hub', '2');
  const h1 = count(after, 'hub', '1.1') - count(before, 'hub', '1.1');
  assert(h2 >= 1 && h1 === 0,
    `wsgate_ws_opened_total{via="hub"} went up by ${h2} over http_version="2" and ${h1} over "1.1"; `
    + `expected >= 1 and 0 (Chromium did not use RFC 8441; metrics: ${JSON.stringify(after)})`);
  console.log(`    wsgate_ws_opened_total{via="hub",http_version="2"} +${h2}, {http_version="1.1"} +${h1}`);
  if (SERVER_LOG) {
    const path = `/room/${encodeURIComponent(ROOM)}/`;
    const lines = readFileSync(SERVER_LOG, 'utf8').split('\n')
      .filter((l) => l.includes('wsgate::access') && l.includes('handshake') && l.includes(path));
    assert(lines.length >= 1, `no access line for the handshake on ${path} in ${SERVER_LOG}`);
    for (const l of lines) {
      assert(/http_version="?2"?(\s|$)/.test(l) && /status=200\b/.test(l),
        `access line is not an HTTP/2 extended CONNECT answered 200: ${l}`);
    }
    console.log(`    access: ${lines[0].slice(lines[0].indexOf('wsgate::access'))}`);
  }
});

test('d. screenshot of the demo page over HTTP/2 is saved', async () => {
  mkdirSync(OUT_DIR, { recursive: true });
  await page.screenshot({ path: SCREENSHOT, fullPage: true, timeout: OPEN_MS });
  assert(statSync(SCREENSHOT).size > 1000, `${SCREENSHOT} is (nearly) empty`);
  console.log(`    screenshot: ${SCREENSHOT}`);
});

try {
  console.log(`browser test over HTTP/2 against ${BASE} (room ${ROOM})`);
  browser = await withTimeout(chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    // The certificate is trusted by its key's hash alone (Chromium honours this only with a
    // --user-data-dir, which playwright always passes); no blanket --ignore-certificate-errors.
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
      `--ignore-certificate-errors-spki-list=${SPKI}`],
  }), 40_000, `launching ${CHROMIUM}`);
  console.log(`chromium ${browser.version()} launched`);
  context = await browser.newContext({ viewport: { width: 1000, height: 900 } });
} catch (e) {
  console.log(`not ok - launch chromium: ${e.message}`);
  console.log(`browser-h2: 0 passed, ${tests.length} failed`);
  process.exit(1);
}

const [passed, failed] = await runTests(tests, TEST_MS, async (name) => {
  if (page) {
    const state = await page.textContent('#state', { timeout: 1000 }).catch(() => '?');
    const close = await page.textContent('#close-info', { timeout: 1000 }).catch(() => '?');
    console.log(`    #state: ${JSON.stringify(state)}   #close-info: ${JSON.stringify(close)}`);
    for (const l of logs.slice(-20)) console.log(`      ${l}`);
    await page.screenshot({ path: join(OUT_DIR, `failed-h2-${name.split('.')[0]}.png`), fullPage: true, timeout: 5000 })
      .catch(() => {});
  }
});
await finish(browser, 'browser-h2', passed, failed);
