// Real-browser test of the wsgate demo page: Debian's chromium driven by
// playwright-core against a running `wsgate serve`.
//
//   node conformance/browser/run.mjs http://127.0.0.1:PORT
//
// (run.sh starts the server and calls this.) The base URL may also come from
// WSGATE_URL. Closes with the line "browser: N passed, N failed"; exit code 0
// only when every test passed.

import { chromium } from 'playwright-core';
import { createServer } from 'node:http';
import { mkdirSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { assert, finish, runTests, startWatchdog, uid, withTimeout } from './harness.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, '..', '..');
const BASE = (process.argv[2] || process.env.WSGATE_URL || '').replace(/\/+$/, '');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const OUT_DIR = resolve(REPO, process.env.WSGATE_BROWSER_OUT || 'target/test-output/browser');
const SCREENSHOT = join(OUT_DIR, 'demo.png');

// Every wait is bounded by one of these.
const OPEN_MS = 10_000;      // page load + WebSocket open
const ARRIVE_MS = 5_000;     // a message shows up on a page
const ABSENT_MS = 1_500;     // how long we watch for a message that must NOT arrive
const HTTP_MS = 5_000;       // one publish request from node
const TEST_MS = 45_000;      // one whole test
const RUN_MS = 240_000;      // the whole run

if (!BASE) {
  console.error('usage: node run.mjs http://127.0.0.1:PORT   (or set WSGATE_URL)');
  process.exit(2);
}

startWatchdog('run.mjs', 'browser', RUN_MS);

const ROOM_A = uid('bt-a');
const ROOM_B = uid('bt-b');
const groupPath = (room) => `/api/groups/${encodeURIComponent(`room:${room}`)}/messages`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- browser

let browser;
let context;
const pages = new Map(); // name -> { page, room, logs: [] }

async function openTab(name, room, client = 'raw') {
  if (pages.has(name)) {
    const tab = pages.get(name);
    await waitState(tab, 'open');
    return tab;
  }
  const page = await context.newPage();
  const tab = { name, page, room, logs: [], shown: 0 };
  pages.set(name, tab);
  page.on('console', (m) => tab.logs.push(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => tab.logs.push(`pageerror: ${e.message}`));
  page.on('requestfailed', (r) => tab.logs.push(`requestfailed: ${r.method()} ${r.url()} ${r.failure()?.errorText ?? ''}`));
  page.on('websocket', (ws) => {
    tab.logs.push(`websocket: created ${ws.url()}`);
    ws.on('close', () => tab.logs.push(`websocket: closed ${ws.url()}`));
    ws.on('socketerror', (e) => tab.logs.push(`websocket: error ${e}`));
  });
  page.setDefaultTimeout(OPEN_MS);
  const url = `${BASE}/?room=${encodeURIComponent(room)}${client === 'raw' ? '' : `&client=${client}`}`;
  const resp = await page.goto(url, { waitUntil: 'domcontentloaded', timeout: OPEN_MS });
  assert(resp && resp.ok(), `GET ${url} answered ${resp ? resp.status() : 'nothing'}`);
  await waitState(tab, 'open');
  const wsUrl = await page.textContent('#ws-url');
  const expected = `${BASE.replace(/^http/, 'ws')}/room/${encodeURIComponent(room)}/`
    + (client === 'raw' ? '' : ' (wsgate.v1)');
  assert(wsUrl === expected, `#ws-url shows ${JSON.stringify(wsUrl)}, expected ${JSON.stringify(expected)}`);
  return tab;
}

async function waitState(tab, want) {
  try {
    await tab.page.waitForFunction(
      (w) => document.querySelector('#state')?.textContent === w,
      want, { timeout: OPEN_MS, polling: 100 });
  } catch (e) {
    throw new Error(`tab ${tab.name}: #state never became ${JSON.stringify(want)} within ${OPEN_MS} ms`);
  }
}

// Texts of all .msg lines on a tab.
async function messages(tab) {
  return tab.page.$$eval('#messages .msg', (els) => els.map((e) => e.textContent));
}

async function waitMessage(tab, text, ms = ARRIVE_MS) {
  try {
    await tab.page.waitForFunction(
      (t) => [...document.querySelectorAll('#messages .msg')].some((e) => e.textContent.includes(t)),
      text, { timeout: ms, polling: 50 });
  } catch (e) {
    const seen = await messages(tab).catch(() => []);
    throw new Error(`tab ${tab.name} (room ${tab.room}): message ${JSON.stringify(text)} did not appear within ${ms} ms; `
      + `.msg lines seen: ${JSON.stringify(seen.slice(-10))}`);
  }
}

// POST from node (not the page) to the publish API.
async function publish(room, body, contentType = 'text/plain; charset=utf-8') {
  const url = `${BASE}${groupPath(room)}`;
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'Content-Type': contentType },
    body,
    signal: AbortSignal.timeout(HTTP_MS),
  });
  const raw = await res.text();
  let json = null;
  try { json = JSON.parse(raw); } catch { /* reported below */ }
  return { url, status: res.status, raw, json };
}

function assertDelivered(r, min = 1) {
  assert(r.status >= 200 && r.status < 300, `POST ${r.url} answered ${r.status}: ${r.raw.slice(0, 300)}`);
  assert(r.json && typeof r.json === 'object', `POST ${r.url} answer is not JSON: ${r.raw.slice(0, 300)}`);
  assert(Number.isInteger(r.json.recipients) && r.json.recipients >= min,
    `POST ${r.url} answered recipients=${JSON.stringify(r.json.recipients)}, expected >= ${min}: ${r.raw.slice(0, 300)}`);
}

async function dumpTabs(test) {
  for (const tab of pages.values()) {
    let state = '?', closeInfo = '?', result = '?', msgs = [];
    try {
      state = await tab.page.textContent('#state', { timeout: 1000 });
      closeInfo = await tab.page.textContent('#close-info', { timeout: 1000 });
      result = await tab.page.textContent('#publish-result', { timeout: 1000 });
      msgs = await messages(tab);
    } catch (e) { state += ` (could not read the page: ${e.message.split('\n')[0]})`; }
    console.log(`    --- tab ${tab.name} (room ${tab.room}) ${tab.page.url()}`);
    console.log(`    #state: ${JSON.stringify(state)}   #close-info: ${JSON.stringify(closeInfo)}`);
    console.log(`    #publish-result: ${JSON.stringify(result)}`);
    console.log(`    last .msg lines: ${JSON.stringify(msgs.slice(-5))}`);
    const fresh = tab.logs.slice(tab.shown);
    tab.shown = tab.logs.length;
    console.log(`    console, websocket and request events since the last report (${fresh.length}):`);
    if (fresh.length > 30) console.log(`      ... ${fresh.length - 30} earlier ones left out`);
    for (const l of fresh.slice(-30)) console.log(`      ${l}`);
    try {
      mkdirSync(OUT_DIR, { recursive: true });
      const shot = join(OUT_DIR, `failed-${test}-${tab.name}.png`);
      await tab.page.screenshot({ path: shot, fullPage: true, timeout: 5000 });
      console.log(`    screenshot: ${shot}`);
    } catch { /* the page may be gone */ }
  }
}

// ---------------------------------------------------------------- tests

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

test('a. a message POSTed to the HTTP API appears in the browser', async () => {
  const t1 = await openTab('t1', ROOM_A);
  const text = uid('api-post');
  const r = await publish(ROOM_A, text);
  assertDelivered(r, 1);
  await waitMessage(t1, text);
});

test('b. a message sent on the socket reaches a second tab in the room and the sender', async () => {
  const t1 = await openTab('t1', ROOM_A);
  const t2 = await openTab('t2', ROOM_A);
  const text = uid('socket-send');
  await t1.page.fill('#send-text', text);
  await t1.page.click('#send');
  await waitMessage(t2, text);
  await waitMessage(t1, text);
  // Enter in the input sends too.
  const text2 = uid('socket-enter');
  await t2.page.fill('#send-text', text2);
  await t2.page.press('#send-text', 'Enter');
  await waitMessage(t1, text2);
  await waitMessage(t2, text2);
});

test('e. screenshot of the demo page is saved', async () => {
  // Taken whatever state the page is in: it helps most when (a)/(b) failed.
  const t1 = pages.get('t1') || await openTab('t1', ROOM_A);
  mkdirSync(OUT_DIR, { recursive: true });
  await t1.page.screenshot({ path: SCREENSHOT, fullPage: true, timeout: OPEN_MS });
  assert(statSync(SCREENSHOT).size > 1000, `${SCREENSHOT} is (nearly) empty`);
  console.log(`    screenshot: ${SCREENSHOT}`);
});

test('c. the page\'s publish form POSTs to the room and shows the recipients', async () => {
  const t1 = await openTab('t1', ROOM_A);
  const t2 = await openTab('t2', ROOM_A);
  const text = uid('form-publish');
  await t1.page.fill('#publish-text', text);
  await t1.page.click('#publish');
  await waitMessage(t1, text);
  await waitMessage(t2, text);
  let shown = '';
  try {
    await t1.page.waitForFunction(
      () => /recipients"?\s*:\s*\d+/.test(document.querySelector('#publish-result')?.textContent || ''),
      null, { timeout: ARRIVE_MS, polling: 100 });
  } finally {
    shown = (await t1.page.textContent('#publish-result').catch(() => '')) || '';
  }
  const n = Number((shown.match(/recipients"?\s*:\s*(\d+)/) || [])[1]);
  assert(n >= 1, `#publish-result shows ${JSON.stringify(shown)}, expected recipients >= 1`);
});

test('d. a tab in another room does not get the first room\'s messages', async () => {
  const t1 = await openTab('t1', ROOM_A);
  const t3 = await openTab('t3', ROOM_B);
  // Positive control: t3 is live in its own room.
  const mine = uid('room-b');
  assertDelivered(await publish(ROOM_B, mine), 1);
  await waitMessage(t3, mine);
  // Room A traffic, by the API and by the socket, arrives in room A ...
  const viaApi = uid('room-a-api');
  assertDelivered(await publish(ROOM_A, viaApi), 1);
  const viaSocket = uid('room-a-socket');
  await t1.page.fill('#send-text', viaSocket);
  await t1.page.click('#send');
  await waitMessage(t1, viaApi);
  await waitMessage(t1, viaSocket);
  // ... and not in room B, however long we watch (bounded).
  await sleep(ABSENT_MS);
  const seen = await messages(t3);
  const leaked = seen.filter((m) => m.includes(viaApi) || m.includes(viaSocket));
  assert(leaked.length === 0, `tab t3 in room ${ROOM_B} got room ${ROOM_A}'s messages: ${JSON.stringify(leaked)}`);
});

test('f. message data is shown as text, never as HTML', async () => {
  const t1 = await openTab('t1', ROOM_A);
  const marker = uid('xss');
  const evil = `<img src=x onerror="window.__xss='${marker}'"><b id="${marker}">${marker}</b>`;
  assertDelivered(await publish(ROOM_A, evil), 1);
  await waitMessage(t1, evil);
  await sleep(200);
  const injected = await t1.page.evaluate((m) => ({
    ran: window.__xss === m,
    elements: document.querySelectorAll(`#messages img, [id="${m}"]`).length,
  }), marker);
  assert(!injected.ran && injected.elements === 0,
    `message markup was interpreted as HTML: ${JSON.stringify(injected)}`);
});

test('g. a binary message is shown as [binary N bytes]', async () => {
  const t1 = await openTab('t1', ROOM_A);
  // 37 bytes is unlikely to clash with anything else on the page.
  const bytes = new Uint8Array(37).map((_, i) => (i * 7) & 0xff);
  assertDelivered(await publish(ROOM_A, bytes, 'application/octet-stream'), 1);
  await waitMessage(t1, '[binary 37 bytes]');
});

// wsgate's /metrics as { name: value }.
async function metrics() {
  const res = await fetch(`${BASE}/metrics`, { signal: AbortSignal.timeout(HTTP_MS) });
  const raw = await res.text();
  assert(res.ok, `GET /metrics answered ${res.status}`);
  const out = {};
  for (const line of raw.split('\n')) {
    const m = line.match(/^(wsgate_[a-z_]+) (\d+)$/);
    if (m) out[m[1]] = Number(m[2]);
  }
  return out;
}

test('k. Chromium negotiates permessage-deflate: wsgate sends it compressed frames and inflates its messages', async () => {
  const room = uid('bt-deflate');
  const page = await context.newPage();
  const tab = { name: 'deflate', page, room, logs: [], shown: 0 };
  pages.set(tab.name, tab);
  // The handshake as Chromium saw it, from the DevTools protocol.
  const cdp = await context.newCDPSession(page);
  await cdp.send('Network.enable');
  const handshakes = [];
  cdp.on('Network.webSocketHandshakeResponseReceived', (e) => handshakes.push(e.response));
  const url = `${BASE}/?room=${encodeURIComponent(room)}`;
  const resp = await page.goto(url, { waitUntil: 'domcontentloaded', timeout: OPEN_MS });
  assert(resp && resp.ok(), `GET ${url} answered ${resp ? resp.status() : 'nothing'}`);
  await waitState(tab, 'open');
  const headers = handshakes.at(-1)?.headers || {};
  const agreed = Object.entries(headers).find(([k]) => k.toLowerCase() === 'sec-websocket-extensions')?.[1] || '';
  assert(agreed.startsWith('permessage-deflate'),
    `the 101 Chromium got has Sec-WebSocket-Extensions ${JSON.stringify(agreed)}; headers: ${JSON.stringify(headers)}`);

  // A publication big enough to be compressed (over compression_min_bytes, 256 by default).
  const before = await metrics();
  assert(before.wsgate_ws_deflate_connections >= 1,
    `wsgate_ws_deflate_connections is ${before.wsgate_ws_deflate_connections} with Chromium connected`);
  const marker = uid('deflated');
  const body = `${marker} ` + JSON.stringify(Array.from({ length: 40 }, (_, i) => ({ step: i, status: 'running' })));
  assertDelivered(await publish(room, body), 1);
  await waitMessage(tab, marker);
  const after = await metrics();
  const sent = after.wsgate_ws_deflate_deliveries_total - before.wsgate_ws_deflate_deliveries_total;
  assert(sent >= 1, `wsgate_ws_deflate_deliveries_total went up by ${sent}: no compressed frame was queued to Chromium`);

  // Chromium compresses what it sends; wsgate inflates it and broadcasts it back.
  const mine = `${uid('from-chromium')} ` + 'status running, step done; '.repeat(30);
  await page.fill('#send-text', mine);
  await page.click('#send');
  await waitMessage(tab, mine.slice(0, 40));
  const last = await metrics();
  const inflated = last.wsgate_ws_deflate_inflated_total - after.wsgate_ws_deflate_inflated_total;
  assert(inflated >= 1, `wsgate_ws_deflate_inflated_total went up by ${inflated}: Chromium's message did not arrive compressed`);
  console.log(`    Sec-WebSocket-Extensions: ${agreed}; compressed deliveries +${sent}, inflated +${inflated}`);
});

async function getJson(path) {
  const res = await fetch(`${BASE}${path}`, { signal: AbortSignal.timeout(HTTP_MS) });
  const raw = await res.text();
  assert(res.ok, `GET ${path} answered ${res.status}: ${raw.slice(0, 300)}`);
  return JSON.parse(raw);
}

// The .msg lines of a tab that look like `prefix-N`, in page order.
async function progressLines(tab, prefix) {
  return (await messages(tab)).filter((m) => m.includes(prefix)).map((m) => m.slice(m.indexOf(prefix)));
}

function assertOnceInOrder(lines, want, where) {
  assert(JSON.stringify(lines) === JSON.stringify(want),
    `${where}: expected every line once, in order; got ${JSON.stringify(lines)}`);
}

test('h. with wsgate.js, a socket the server cuts reconnects and every progress line shows once, in order', async () => {
  const room = uid('bt-cut');
  const tab = await openTab('t4', room, 'wsgate.js');
  const prefix = uid('progress');
  const want = Array.from({ length: 40 }, (_, i) => `${prefix}-${String(i).padStart(2, '0')}`);
  let cut = false;
  for (const [i, line] of want.entries()) {
    if (i === 15) {
      // Cut this page's socket from the server side, as an admin (or a restart) would.
      const p = await getJson(`/api/groups/${encodeURIComponent(`room:${room}`)}/presence`);
      assert(p.count === 1, `expected the page alone in the room: ${JSON.stringify(p)}`);
      const id = p.connections[0].id;
      const res = await fetch(`${BASE}/api/connections/${id}?code=1012&reason=cut%20by%20the%20test`,
        { method: 'DELETE', signal: AbortSignal.timeout(HTTP_MS) });
      assert(res.ok, `DELETE /api/connections/${id} answered ${res.status}`);
      cut = true;
    }
    const r = await publish(room, line);
    assert(r.status === 200, `publish answered ${r.status}: ${r.raw}`);
    await sleep(30);
  }
  assert(cut, 'the socket was cut');
  await waitMessage(tab, want[want.length - 1], OPEN_MS);
  await tab.page.waitForFunction(() => [...document.querySelectorAll('#messages .note')]
    .some((e) => e.textContent.includes('every missed message recovered')), null, { timeout: ARRIVE_MS });
  assertOnceInOrder(await progressLines(tab, prefix), want, 'tab t4');
  mkdirSync(OUT_DIR, { recursive: true });
  await tab.page.screenshot({ path: join(OUT_DIR, 'wsgate-js-recovered.png'), fullPage: true });
});

test('i. a raw page replaced by a classic form POST shows every progress line the backend published meanwhile', async () => {
  const room = uid('bt-form');
  const prefix = uid('step');
  const want = Array.from({ length: 10 }, (_, i) => `${prefix}-${i}`);
  const wsUrl = `${BASE.replace(/^http/, 'ws')}/room/${encodeURIComponent(room)}/`;
  const pageHtml = `<!doctype html><meta charset="utf-8"><title>upload</title>
<form method="post" action="/upload" enctype="multipart/form-data">
<input type="file" name="sheet"><button id="go">Upload</button></form>
<div id="lines"></div>
<script>
const ws = new WebSocket(${JSON.stringify(wsUrl)});
ws.onopen = () => document.body.dataset.open = "1";
ws.onmessage = (e) => { const d = document.createElement("div"); d.className = "line"; d.textContent = e.data; document.getElementById("lines").appendChild(d); };
</script>`;
  // The backend: the POST handler publishes its progress, then answers with the new page, as
  // a Django view does; the new page's socket joins after every publish.
  const backend = createServer(async (req, res) => {
    if (req.method === 'POST') {
      for await (const _ of req) { /* read the upload */ }
      for (const line of want) {
        const r = await publish(room, line);
        if (r.status !== 200) { res.writeHead(500); res.end(r.raw); return; }
        await sleep(10);
      }
    }
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(pageHtml);
  });
  await new Promise((r) => backend.listen(0, '127.0.0.1', r));
  const appUrl = `http://127.0.0.1:${backend.address().port}/`;
  try {
    const page = await context.newPage();
    const tab = { name: 'form', page, room, logs: [], shown: 0 };
    pages.set('form', tab);
    await page.goto(appUrl, { waitUntil: 'domcontentloaded', timeout: OPEN_MS });
    await page.waitForFunction(() => document.body.dataset.open === '1', null, { timeout: OPEN_MS });
    await page.setInputFiles('input[name=sheet]', { name: 'sheet.csv', mimeType: 'text/csv', buffer: Buffer.from('a,b\n1,2\n') });
    await Promise.all([page.waitForNavigation({ timeout: OPEN_MS }), page.click('#go')]);
    await page.waitForFunction((n) => document.querySelectorAll('#lines .line').length >= n, want.length,
      { timeout: ARRIVE_MS, polling: 50 });
    await sleep(300);
    const lines = await page.$$eval('#lines .line', (els) => els.map((e) => e.textContent));
    assertOnceInOrder(lines, want, 'the page after the form POST');
    mkdirSync(OUT_DIR, { recursive: true });
    await page.screenshot({ path: join(OUT_DIR, 'form-post-replayed.png'), fullPage: true });
  } finally {
    backend.close();
  }
});

// ---------------------------------------------------------------- main

try {
  console.log(`browser test against ${BASE} (rooms ${ROOM_A}, ${ROOM_B})`);
  browser = await withTimeout(chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  }), 40_000, `launching ${CHROMIUM}`);
  console.log(`chromium ${browser.version()} launched`);
  context = await browser.newContext({ viewport: { width: 1000, height: 900 } });
} catch (e) {
  console.log(`not ok - launch chromium: ${e.message}`);
  console.log(`browser: 0 passed, ${tests.length} failed`);
  process.exit(1);
}

const [passed, failed] = await runTests(tests, TEST_MS, async (name) => {
  await withTimeout(dumpTabs(name.split('.')[0]), 20_000, 'reading the pages').catch((err) => console.log(`    (${err.message})`));
});
await finish(browser, 'browser', passed, failed);
