/**
 * Runs the redirection probes in the network namespace it is started in (by `nsenter --net=...`):
 * reads a TransparentProxyConfig as JSON on stdin, prints a VerifyResult as JSON.
 */
import { verifyRedirection } from './verify.js';

let input = '';
process.stdin.on('data', (d: Buffer) => (input += d.toString()));
process.stdin.on('end', () => {
  verifyRedirection(JSON.parse(input) as Parameters<typeof verifyRedirection>[0])
    .then((r) => process.stdout.write(`${JSON.stringify(r)}\n`))
    .catch((err: Error) => {
      process.stdout.write(`${JSON.stringify({ problems: [`probe failed: ${err.message}`], notes: [] })}\n`);
    });
});
