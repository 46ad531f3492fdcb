import { z } from 'zod';

export const SERVICE_TAG = 'kuma.io/service';
export const PROTOCOL_TAG = 'kuma.io/protocol';
export const PROTOCOLS = ['tcp', 'http', 'http2', 'grpc', 'kafka'] as const;
export type Protocol = (typeof PROTOCOLS)[number];

/** Adds the checks every Kuma tag set shares: the service tag where required, a known protocol. */
export function checkTags(
  ctx: z.RefinementCtx,
  tags: Record<string, string> | undefined,
  path: PropertyKey[],
  opts: { requireService: boolean },
): void {
  if (tags === undefined) return;
  if (opts.requireService && tags[SERVICE_TAG] === undefined) {
    ctx.addIssue({ code: 'custom', path: [...path, SERVICE_TAG], message: 'required' });
  }
  const protocol = tags[PROTOCOL_TAG];
  if (protocol !== undefined && protocol !== '*' && !(PROTOCOLS as readonly string[]).includes(protocol)) {
    ctx.addIssue({ code: 'custom', path: [...path, PROTOCOL_TAG], message: `must be one of: ${PROTOCOLS.join(', ')}` });
  }
}

/** Kuma fields we accept and store but do not act on yet; kept open so documented YAML applies. */
export const opaque = z.looseObject({});
