import assert from 'node:assert/strict';

/**
 * Waits until `ok` holds, checking every `everyMs`, and fails naming `what` after `ms`: for what
 * happens on the other side of a socket or in another turn of the event loop. `detail` adds what
 * was last seen to the failure.
 */
export async function until(what: string, ok: () => boolean | Promise<boolean>, ms = 5000, everyMs = 10, detail?: () => string): Promise<void> {
  for (const end = Date.now() + ms; !(await ok()); await new Promise((r) => setTimeout(r, everyMs))) {
    if (Date.now() > end) assert.fail(`not within ${ms} ms: ${what}${detail ? `; ${detail()}` : ''}`);
  }
}
