#!/usr/bin/env node
import { main } from '../cli/weftctl.js';

process.exitCode = await main(process.argv.slice(2));
