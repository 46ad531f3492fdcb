/** `npm run demo`: the zero-trust walkthrough, narrated. Cleans up after itself. */
import { runWalkthrough, type Narrator } from './walkthrough.js';

const t0 = Date.now();
const secs = () => `${((Date.now() - t0) / 1000).toFixed(1)}s`;
const narrator: Narrator = {
  step: (n, title) => process.stdout.write(`\n[${secs()}] Step ${n}: ${title}\n`),
  say: (text) => process.stdout.write(`    ${text}\n`),
  command: (text) => process.stdout.write(`    $ ${text}\n`),
  ok: (text) => process.stdout.write(`    => ${text}\n`),
};

process.stdout.write('Weft zero-trust walkthrough: a gateway, a demo app and its redis, as proxyless gRPC apps,\neach beside its own weft-dp. Every step is checked; the demo stops at the first surprise.\n');
try {
  const outcomes = await runWalkthrough(narrator);
  process.stdout.write(`\n[${secs()}] All ${outcomes.length} steps behaved as expected. Everything started was stopped and removed.\n`);
} catch (err) {
  process.stdout.write(`\n[${secs()}] The walkthrough failed: ${(err as Error).message}\n`);
  process.exitCode = 1;
}
