// Real-browser test of the admin console: Debian's chromium driven by playwright-core against
// a running `wsgate serve` with an admin listener.
//
//   node conformance/browser/console.mjs http://127.0.0.1:MAIN http://127.0.0.1:ADMIN
//
// (console.sh starts the server and calls this.) It opens the console, connects WebSockets from
// a second page, watches the member count and the message rate change, publishes through the
// console's form (the sockets receive it), disconnects one connection through the form (it gets
// the code), and saves a screenshot it checks is not blank. Closes with
// "console: N passed, N failed"; exit 0 only when every check passed.

import { chromium } from 'playwright-core';
import { mkdirSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, '..', '..');
const MAIN = (process.argv[2] || '').replace(/\/+$/, '');
const ADMIN = (process.argv[3] || '').replace(/\/+$/, '');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const OUT_DIR = resolve(REPO, process.env.WSGATE_BROWSER_OUT || 'target/test-output/browser');
const SCREENSHOT = join(OUT_DIR, 'console.png');
const WAIT_MS = 10_000;
const RUN_MS = 120_000;

if (!MAIN || !ADMIN) {
  console.error('usage: node console.mjs http://127.0.0.1:MAIN http://127.0.0.1:ADMIN');
  process.exit(2);
}
const watchdog = setTimeout(() => {
  console.error(`console.mjs: the run took longer than ${RUN_MS / 1000}s; giving up`);
  console.log('console: 0 passed, 1 failed');
  process.exit(1);
}, RUN_MS);
watchdog.unref();

const room = `ct-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
const group = `room:${room}`;
let passed = 0;
let failed = 0;

function check(cond, what) {
  if (cond) { passed++; console.log(`ok - ${what}`); } else { failed++; console.log(`not ok - ${what}`); }
  return cond;
}

// Polls `fn` (async) until it returns a truthy value or the wait runs out; returns the value.
async function until(fn, ms = WAIT_MS) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try { last = await fn(); } catch (e) { last = undefined; }
    if (last) { return last; }
    await new Promise((r) => setTimeout(r, 100));
  }
  return last;
}

mkdirSync(OUT_DIR, { recursive: true });
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  timeout: 30_000,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
});
const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
const errors = [];
try {
  const consolePage = await context.newPage();
  consolePage.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  consolePage.on('console', (m) => { if (m.type() === 'error') { errors.push(`console.error: ${m.text()}`); } });
  const resp = await consolePage.goto(`${ADMIN}/`, { timeout: WAIT_MS });
  check(resp.status() === 200, 'the console page loads (200)');
  check((resp.headers()['content-security-policy'] || '').includes("default-src 'self'"), 'the console page has a CSP');
  check(await until(() => consolePage.locator('#ready').textContent().then((t) => t === 'ready')), 'the console shows the node ready');

  // Two WebSockets from a page on the main listener.
  const clients = await context.newPage();
  await clients.goto(`${MAIN}/`, { timeout: WAIT_MS });
  await clients.evaluate(({ base, room }) => {
    window.socks = [];
    window.got = [[], []];
    window.closes = [null, null];
    for (let i = 0; i < 2; i++) {
      const ws = new WebSocket(base.replace('http', 'ws') + `/room/${room}/`);
      ws.onmessage = (e) => window.got[i].push(e.data);
      ws.onclose = (e) => { window.closes[i] = { code: e.code, reason: e.reason }; };
      window.socks.push(ws);
    }
  }, { base: MAIN, room });
  await until(() => clients.evaluate(() => window.socks.every((s) => s.readyState === 1)));
  const row = consolePage.locator(`tr[data-group="${group}"]`);
  const members = await until(async () => (await row.locator('.members').textContent()) === '2');
  check(members, `the console shows ${group} with 2 members`);

  // Publish through the form a few times: the sockets get it and the out rate moves.
  for (let i = 0; i < 5; i++) {
    await consolePage.fill('#pubgroup', group);
    await consolePage.fill('#pubdata', `hello from the console ${i}`);
    await consolePage.click('#publish button');
    await until(async () => (await consolePage.locator('#pubresult').textContent()).includes(`${i}`) || true);
    await new Promise((r) => setTimeout(r, 150));
  }
  const result = await consolePage.locator('#pubresult').textContent();
  check(/published to room:.*: 2 local recipients/.test(result), `the publish form reports 2 recipients (${result})`);
  const received = await until(() => clients.evaluate(() => window.got.every((g) => g.includes('hello from the console 4'))));
  check(received, 'both sockets received the console\'s message');
  const rate = await until(async () => parseFloat(await consolePage.locator('#outrate').textContent()) > 0);
  check(rate, 'the messages-out rate rises above 0');
  const drawn = await consolePage.evaluate(() => {
    const c = document.getElementById('msgchart');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let painted = 0;
    for (let i = 3; i < d.length; i += 4) { if (d[i] > 0) { painted++; } }
    return painted;
  });
  check(drawn > 500, `the message chart is drawn (${drawn} painted pixels)`);

  // Disconnect one connection through the form, with code 4000.
  const ids = (await row.locator('.ids').textContent()).trim().split(/\s+/);
  check(ids.length >= 2 && /^[0-9a-f]+\.\d+$/.test(ids[0]), `the console lists the connection ids (${ids.join(' ')})`);
  await consolePage.fill('#connid', ids[0]);
  await consolePage.fill('#code', '4000');
  await consolePage.fill('#reason', 'bye from the console');
  await consolePage.click('#disconnect button');
  const closed = await until(() => clients.evaluate(() => window.closes.find((c) => c)));
  check(closed && closed.code === 4000 && closed.reason === 'bye from the console',
    `a socket was closed with 4000 and the reason (${JSON.stringify(closed)})`);
  const one = await until(async () => (await row.locator('.members').textContent()) === '1');
  check(one, 'the member count drops to 1');
  check((await consolePage.locator('#discresult').textContent()).startsWith('closed '), 'the disconnect form reports it');

  // Let the charts gather a few more points, then keep a picture.
  await new Promise((r) => setTimeout(r, 1500));
  await consolePage.screenshot({ path: SCREENSHOT, fullPage: true });
  const size = statSync(SCREENSHOT).size;
  check(size > 30_000, `the screenshot ${SCREENSHOT} is not trivial (${size} bytes)`);
  check(errors.length === 0, `no page errors (${errors.join('; ')})`);
} catch (e) {
  failed++;
  console.log(`not ok - ${e.message}`);
  for (const l of errors) { console.log(`    ${l}`); }
}
await browser.close().catch(() => {});
console.log(`console: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
