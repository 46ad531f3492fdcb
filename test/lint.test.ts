import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { ESLint } from 'eslint';

const cwd = fileURLToPath(new URL('../../', import.meta.url));
const eslint = new ESLint({ cwd });

async function restricted(filePath: string, code: string): Promise<string[]> {
  const [result] = await eslint.lintText(code, { filePath });
  return result!.messages.filter((m) => m.ruleId === 'no-restricted-imports').map((m) => m.message);
}

describe('layering lint rule', () => {
  it('stops a lower layer from importing a higher one', async () => {
    const msgs = await restricted('src/core/x.ts', "import { openStore } from '../store/index.js';\nexport const s = openStore;\n");
    assert.equal(msgs.length, 1);
    assert.match(msgs[0]!, /src\/core may import only nothing else in src/);
    assert.equal((await restricted('src/store/deep/x.ts', "import { buildApi } from '../../api/index.js';\nexport const b = buildApi;\n")).length, 1);
    assert.equal((await restricted('src/cli/x.ts', "import { loadConfig } from '../cp/index.js';\nexport const l = loadConfig;\n")).length, 1);
  });

  it('keeps translation pure: no store, no file system, no gRPC in src/xds', async () => {
    assert.equal((await restricted('src/xds/x.ts', "import { openStore } from '../store/index.js';\nexport const s = openStore;\n")).length, 1);
    assert.equal((await restricted('src/xds/x.ts', "import { readFileSync } from 'node:fs';\nexport const r = readFileSync;\n")).length, 1);
    assert.equal((await restricted('src/xds/x.ts', "import * as grpc from '@grpc/grpc-js';\nexport const g = grpc;\n")).length, 1);
  });

  it('allows imports downward', async () => {
    assert.deepEqual(await restricted('src/api/x.ts', "import type { Store } from '../store/index.js';\nimport { MESH_TYPE } from '../core/index.js';\nexport type S = Store;\nexport const m = MESH_TYPE;\n"), []);
    assert.deepEqual(await restricted('src/xds/x.ts', "import { MESH_TYPE } from '../core/index.js';\nexport const m = MESH_TYPE;\n"), []);
  });
});
