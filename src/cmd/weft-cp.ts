#!/usr/bin/env node
import { Command } from 'commander';
import { createLogger, isWeftError, VERSION } from '../core/index.js';
import { loadConfig, startControlPlane } from '../cp/index.js';

const program = new Command('weft-cp').description('Weft control plane').version(VERSION);

program
  .command('run')
  .description('run the control plane (HTTP API on 5681, diagnostics on 5680)')
  .option('-c, --config <file>', 'YAML config file (also WEFT_CONFIG_FILE); WEFT_* variables override it')
  .action(async (opts: { config?: string }) => {
    let config;
    try {
      config = loadConfig({ file: opts.config });
    } catch (err) {
      if (!isWeftError(err)) throw err;
      process.stderr.write(`weft-cp: ${err.message}\n${err.violations.map((v) => `  ${v.field}: ${v.message}\n`).join('')}`);
      process.exit(2);
    }
    const logger = createLogger('weft-cp', config.log.level);
    let cp;
    try {
      cp = await startControlPlane(config, logger);
    } catch (err) {
      logger.fatal({ err }, 'control plane failed to start');
      process.exit(1);
    }
    let signals = 0;
    const stop = (signal: string) => {
      signals++;
      if (signals > 1) {
        logger.warn({ signal }, 'second signal: exiting now');
        process.exit(130);
      }
      logger.info({ signal }, 'shutting down');
      cp.close().then(
        () => process.exit(0),
        (err: unknown) => {
          logger.error({ err }, 'shutdown failed');
          process.exit(1);
        },
      );
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });

await program.parseAsync();
