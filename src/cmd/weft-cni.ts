#!/usr/bin/env node
import { main } from '../cni/main.js';

process.exitCode = await main(process.argv.slice(2));
