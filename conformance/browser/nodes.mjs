// Real-browser test of two wsgate nodes sharing groups through Redis: Debian's chromium, driven
// by playwright-core, opens one page on each node; both use /wsgate.js (wsgate.v1) and must see
// each other's messages and presence.
//
//   node conformance/browser/nodes.mjs http://127.0.0.1:PORT_A http://127.0.0.1:PORT_B
//
// (nodes.sh starts Redis and the nodes and calls this.) Closes with the line
// "browser nodes: N passed, N failed"; exit code 0 only when every check passed.

import { chromium } from 'playwright-core';
import { randomBytes } from 'node:crypto';

const [A, B] = process.argv.slice(2).map((u) => (u || '').replace(/\/+$/, ''));
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const WAIT_MS = 10_000;   // every wait for something to show up
const RUN_MS = 90_000;    // the whole run

if (!A || !B) {
  console.error('usage: node nodes.mjs http://127.0.0.1:PORT_A http://127.0.0.1:PORT_B');
  process.exit(2);
}
const watchdog = setTimeout(() => {
  console.error(`nodes.mjs: the run took longer than ${RUN_MS / 1000}s; giving up`);
  console.log('browser nodes: 0 passed, 1 failed');
  process.exit(1);
}, RUN_MS);
watchdog.unref();

const room = `bn-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
const group = `room:${room}`;
let passed = 0;
let failed = 0;

async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok   ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e.message}`);
  }
}

function assert(cond, msg) {
  if (!cond) throw new Error(`assertion failed: ${msg}`);
}

// Opens `base`'s demo page (which loads /wsgate.js) and subscribes a WsGate client as `name`.
async function openNode(context, base, name) {
  const page = await context.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  await page.goto(`${base}/`, { timeout: WAIT_MS });
  await page.waitForFunction(() => typeof window.WsGate === 'function', null, { timeout: WAIT_MS });
  await page.evaluate(async ({ room, group, name }) => {
    window.got = [];
    window.joined = [];
    const url = location.origin.replace(/^http/, 'ws') + `/room/${room}/`;
    const c = new window.WsGate(url);
    c.on('publication', (p) => window.got.push(p.data));
    c.on('join', (e) => window.joined.push(e.connection.info && e.connection.info.name));
    // Called while the socket still connects: it must settle with the server's reply (so the
    // group is subscribed on the node), not before.
    const reply = await c.subscribe(group, { events: true, info: { name } });
    if (reply.type !== 'ok') throw new Error(`subscribe settled with ${JSON.stringify(reply)}, not the ok reply`);
    window.client = c;
  }, { room, group, name });
  return { page, logs };
}

async function waitFor(page, fn, arg, what) {
  try {
    await page.waitForFunction(fn, arg, { timeout: WAIT_MS, polling: 50 });
  } catch (e) {
    throw new Error(`timed out after ${WAIT_MS} ms: ${what}`);
  }
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
let a;
let b;
try {
  const context = await browser.newContext();
  a = await openNode(context, A, 'page-a');
  b = await openNode(context, B, 'page-b');

  await check('a message published by the page on node A reaches the page on node B', async () => {
    await a.page.evaluate((group) => window.client.publish(group, 'hello from A'), group);
    await waitFor(b.page, () => window.got.includes('hello from A'), null, 'B sees A\'s message');
  });

  await check('a message published by the page on node B reaches the page on node A', async () => {
    await b.page.evaluate((group) => window.client.publish(group, 'hello from B'), group);
    await waitFor(a.page, () => window.got.includes('hello from B'), null, 'A sees B\'s message');
    // Each exactly once on both pages.
    for (const t of [a, b]) {
      const got = await t.page.evaluate(() => window.got);
      assert(got.filter((m) => m === 'hello from A').length === 1, `once: ${JSON.stringify(got)}`);
      assert(got.filter((m) => m === 'hello from B').length === 1, `once: ${JSON.stringify(got)}`);
    }
  });

  await check('each page sees both pages in presence, and A saw B join', async () => {
    for (const t of [a, b]) {
      const p = await t.page.evaluate((group) => window.client.presence(group), group);
      const names = p.connections.map((c) => c.info && c.info.name).sort();
      assert(p.count === 2 && names.join(',') === 'page-a,page-b', `presence: ${JSON.stringify(p)}`);
    }
    await waitFor(a.page, () => window.joined.includes('page-b'), null, 'A gets B\'s join event');
  });
} catch (e) {
  failed++;
  console.log(`FAIL setup: ${e.message}`);
} finally {
  if (failed > 0) {
    for (const [n, t] of [['A', a], ['B', b]]) {
      if (t) console.log(`--- page ${n} logs:\n${t.logs.slice(-20).join('\n')}`);
    }
  }
  await browser.close();
}
console.log(`browser nodes: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
