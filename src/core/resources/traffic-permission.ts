import { z } from 'zod';
import { tagsSchema } from '../validation.js';
import { checkTags } from './common.js';

const selector = z.strictObject({ match: tagsSchema });

/** Kuma's legacy permission: sources may call destinations, matched by tags (`*` matches any). */
export const trafficPermissionSpec = z
  .strictObject({
    sources: z.array(selector).min(1),
    destinations: z.array(selector).min(1),
  })
  .superRefine((tp, ctx) => {
    tp.sources.forEach((s, i) => checkTags(ctx, s.match, ['sources', i, 'match'], { requireService: true }));
    tp.destinations.forEach((d, i) => checkTags(ctx, d.match, ['destinations', i, 'match'], { requireService: true }));
  });

export type TrafficPermissionSpec = z.infer<typeof trafficPermissionSpec>;
