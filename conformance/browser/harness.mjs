// Shared by the browser tests (run.mjs, h2.mjs, django.mjs): a watchdog over the whole run,
// unique names, deadlines, assertions, and the loop that runs the tests and prints the summary
// line the scripts and CI look for ("LABEL: N passed, N failed").

import { randomBytes } from 'node:crypto';

// Gives up on the whole run after `ms`, saying so in the summary line.
export function startWatchdog(script, label, ms) {
  const t = setTimeout(() => {
    console.error(`${script}: the whole run took longer than ${ms / 1000}s; giving up`);
    console.log(`${label}: 0 passed, 1 failed`);
    process.exit(1);
  }, ms);
  t.unref();
}

export const uid = (p) => `${p}-${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;

export function withTimeout(promise, ms, what) {
  let t;
  return Promise.race([
    promise,
    new Promise((_, rej) => { t = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms); }),
  ]).finally(() => clearTimeout(t));
}

export function assert(cond, msg) {
  if (!cond) throw new Error(`assertion failed: ${msg}`);
}

// Runs each { name, fn } within `testMs`, printing "ok - NAME" or "not ok - NAME" and why;
// `onFail(name)` may show more (pages, logs). Returns [passed, failed].
export async function runTests(tests, testMs, onFail = async () => {}) {
  let passed = 0;
  let failed = 0;
  for (const { name, fn } of tests) {
    const started = Date.now();
    try {
      await withTimeout(fn(), testMs, name);
      passed++;
      console.log(`ok - ${name} (${Date.now() - started} ms)`);
    } catch (e) {
      failed++;
      console.log(`not ok - ${name} (${Date.now() - started} ms)`);
      console.log(`    ${String(e && e.message || e).split('\n').join('\n    ')}`);
      await onFail(name);
    }
  }
  return [passed, failed];
}

// Closes the browser, prints the summary line and exits: 0 only when nothing failed.
export async function finish(browser, label, passed, failed) {
  await withTimeout(browser.close(), 10_000, 'closing chromium').catch((e) => console.log(`(${e.message})`));
  console.log(`${label}: ${passed} passed, ${failed} failed`);
  process.exit(failed === 0 ? 0 : 1);
}
