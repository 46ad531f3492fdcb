import { test } from 'node:test';

/**
 * Guards tests that need a part of the system (PostgreSQL, iptables, ...). When the part is
 * missing the tests are skipped with the reason, unless WEFT_REQUIRE_ALL=1 (CI), where a failing
 * test names what is missing instead. The one allowed skip in CI is a missing Envoy binary,
 * which does not use this helper.
 */
export function systemRequirement(what: string, missingReason: string | undefined): { skip: string | false } {
  if (missingReason === undefined) return { skip: false };
  if (process.env.WEFT_REQUIRE_ALL === '1') {
    test(`required system part is present: ${what}`, () => {
      throw new Error(`${what} is required (WEFT_REQUIRE_ALL=1) but missing: ${missingReason}`);
    });
  }
  return { skip: `${what} missing: ${missingReason}` };
}
