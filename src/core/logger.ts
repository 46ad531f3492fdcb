import { pino, type Logger } from 'pino';

export type { Logger };

/** Structured JSON logs on stdout. Never pass secrets (tokens, keys) as log fields. */
export function createLogger(component: string, level: string, destination?: NodeJS.WritableStream): Logger {
  return pino({ level, base: { component }, timestamp: pino.stdTimeFunctions.isoTime }, destination ?? process.stdout);
}
