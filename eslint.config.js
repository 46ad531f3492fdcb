// Lint: TypeScript rules plus the layering rule. Layers import downward only: each folder of src/
// may import the folders listed for it and nothing above. docs/architecture.md draws the layers.
import tseslint from 'typescript-eslint';

export const LAYERS = {
  core: [],
  store: ['core'],
  xds: ['core'],
  certs: ['core', 'store'],
  cni: ['core'],
  ads: ['core', 'store', 'xds', 'certs'],
  api: ['core', 'store', 'ads', 'certs'],
  'dp-wrapper': ['core', 'xds', 'certs', 'ads'],
  cli: ['core', 'cni'],
  cp: ['core', 'store', 'xds', 'certs', 'ads', 'api'],
  demo: ['core'],
  cmd: ['core', 'store', 'xds', 'certs', 'cni', 'ads', 'api', 'dp-wrapper', 'cli', 'cp'],
};

/** Translation stays pure: no I/O, no clock-driven servers, no store, no gRPC. */
const IMPURE = ['node:fs', 'fs', 'node:fs/promises', 'node:net', 'node:http', 'node:http2', 'node:child_process', 'node:dgram', 'pg', 'better-sqlite3', 'fastify'];

const escape = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

function layerRule(layer, allowed) {
  const forbidden = Object.keys(LAYERS).filter((l) => l !== layer && !allowed.includes(l));
  const patterns = [
    {
      regex: `^(\\.\\./)+(${forbidden.map(escape).join('|')})(/|$)`,
      message: `src/${layer} may import only ${allowed.length ? allowed.map((l) => `src/${l}`).join(', ') : 'nothing else in src'}: layers import downward (docs/architecture.md).`,
    },
  ];
  if (layer === 'xds') patterns.push({ regex: '^@grpc/', message: 'src/xds is pure translation: no gRPC (that is src/ads).' });
  return {
    files: [`src/${layer}/**/*.ts`],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: layer === 'xds' ? IMPURE.map((name) => ({ name, message: 'src/xds is pure translation: no I/O, store or servers.' })) : [],
          patterns,
        },
      ],
    },
  };
}

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'test/fixtures/**'] },
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', destructuredArrayIgnorePattern: '^_' }],
    },
  },
  ...Object.entries(LAYERS).map(([layer, allowed]) => layerRule(layer, allowed)),
);
