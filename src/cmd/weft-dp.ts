#!/usr/bin/env node
process.stderr.write('weft-dp: not implemented yet (see the issues)\n');
process.exit(1);
