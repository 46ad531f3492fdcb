#!/usr/bin/env node
import { main } from '../dp-wrapper/main.js';

process.exit(await main(process.argv.slice(2)));
