#!/usr/bin/env node
import { main } from '../dp-wrapper/main.js';

// grpc-js sets the TLS server name even when the control plane is addressed by IP, which Node
// flags (DEP0123) on every start; the certificate is still checked against the IP. Other warnings
// are printed as usual.
process.removeAllListeners('warning');
process.on('warning', (w: Error & { code?: string }) => {
  if (w.code !== 'DEP0123') process.stderr.write(`${w.name}: ${w.message}\n`);
});

process.exit(await main(process.argv.slice(2)));
