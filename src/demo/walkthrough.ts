/**
 * The zero-trust walkthrough (Kong's "secure your API platform", in Universal mode, proxyless):
 * weft-cp, three gRPC workloads each beside its own weft-dp, then mTLS and permissions step by
 * step. Every step is asserted, not just printed: a step whose outcome is not seen in time fails
 * the walkthrough. `npm run demo` narrates it; test/e2e/walkthrough.test.ts runs it silently.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';

const bin = (name: string) => fileURLToPath(new URL(`../cmd/${name}.js`, import.meta.url));
const appsScript = fileURLToPath(new URL('./apps.js', import.meta.url));

export interface Narrator {
  step(n: number, title: string): void;
  say(text: string): void;
  command(text: string): void;
  ok(text: string): void;
}

const silent: Narrator = { step: () => undefined, say: () => undefined, command: () => undefined, ok: () => undefined };

export interface StepOutcome {
  step: number;
  title: string;
  /** What was observed, e.g. the reply or the error the user got. */
  observed: string;
}

interface Proc {
  child: ChildProcess;
  /** stdout and stderr lines, in order. */
  lines: string[];
  stdout: string[];
  line(pred: (l: Record<string, unknown>) => boolean, ms?: number): Promise<Record<string, unknown>>;
}

type Reply = { count?: number; demoAppSaw?: string[]; redisSaw?: string[] };
type Hit = { ok: true; reply: Reply } | { ok: false; code: number; details: string };

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

const json = { serialize: (o: unknown) => Buffer.from(JSON.stringify(o)), deserialize: (b: Buffer) => JSON.parse(b.toString()) as unknown };

function hit(client: grpc.Client, path = '/weft.demo.Demo/Hit'): Promise<Hit> {
  return new Promise((resolve) =>
    client.makeUnaryRequest(path, json.serialize, json.deserialize, {}, { deadline: Date.now() + 3000 }, (err, res) =>
      resolve(err ? { ok: false, code: err.code, details: err.details } : { ok: true, reply: res as Reply }),
    ),
  );
}

const describeHit = (h: Hit) => (h.ok ? `OK ${JSON.stringify(h.reply)}` : `${grpc.status[h.code]}: ${h.details}`);

export async function runWalkthrough(narrator: Narrator = silent, opts: { timeoutMs?: number } = {}): Promise<StepOutcome[]> {
  const timeoutMs = opts.timeoutMs ?? 20_000;
  const dir = mkdtempSync(join(tmpdir(), 'weft-demo-'));
  const procs: Proc[] = [];
  const outcomes: StepOutcome[] = [];
  const clients: grpc.Client[] = [];

  const start = (cmd: string[], env: Record<string, string> = {}): Proc => {
    const child = spawn(process.execPath, cmd, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    const p: Proc = {
      child,
      lines: [],
      stdout: [],
      async line(pred, ms = timeoutMs) {
        const t0 = Date.now();
        for (;;) {
          for (const l of p.lines) {
            if (!l.startsWith('{')) continue;
            const o = JSON.parse(l) as Record<string, unknown>;
            if (pred(o)) return o;
          }
          if (child.exitCode !== null) throw new Error(`${cmd.join(' ')} exited with ${child.exitCode}:\n${p.lines.slice(-5).join('\n')}`);
          if (Date.now() - t0 > ms) throw new Error(`${cmd.join(' ')} did not get ready:\n${p.lines.slice(-5).join('\n')}`);
          await new Promise((r) => setTimeout(r, 50));
        }
      },
    };
    createInterface({ input: child.stdout! }).on('line', (l) => {
      p.lines.push(l);
      p.stdout.push(l);
    });
    createInterface({ input: child.stderr! }).on('line', (l) => p.lines.push(l));
    procs.push(p);
    return p;
  };

  let weftctlEnv: Record<string, string> = {};
  const weftctl = async (args: string[], shown = `weftctl ${args.join(' ')}`): Promise<string> => {
    narrator.command(shown);
    const p = start([bin('weftctl'), ...args], { ...weftctlEnv, WEFTCTL_CONFIG: '/nonexistent' });
    const code = await new Promise<number | null>((r) => p.child.once('exit', r));
    if (code !== 0) throw new Error(`${shown} failed:\n${p.lines.join('\n')}`);
    return p.stdout.join('\n');
  };
  const apply = (file: string, yaml: string) => {
    writeFileSync(join(dir, file), yaml);
    return weftctl(['apply', '-f', join(dir, file)], `weftctl apply -f ${file}`);
  };

  /** Hits the gateway until `want` holds for the answer; fails the step otherwise. */
  let gateway!: grpc.Client;
  const until = async (what: string, want: (h: Hit) => boolean): Promise<Hit> => {
    const t0 = Date.now();
    let last: Hit | undefined;
    for (;;) {
      last = await hit(gateway);
      if (want(last)) return last;
      if (Date.now() - t0 > timeoutMs) throw new Error(`expected ${what}, but the gateway answered ${describeHit(last)}`);
      await new Promise((r) => setTimeout(r, 150));
    }
  };
  const record = (step: number, title: string, observed: string) => {
    outcomes.push({ step, title, observed });
    narrator.ok(observed);
  };

  try {
    // 1. The control plane and three workloads.
    let title = 'Start weft-cp, then redis, demo-app and gateway, each beside its own weft-dp --proxyless';
    narrator.step(1, title);
    narrator.command('weft-cp run');
    const cp = start([bin('weft-cp'), 'run'], {
      WEFT_DATA_DIR: join(dir, 'cp'),
      WEFT_API_PORT: '0',
      WEFT_DIAGNOSTICS_PORT: '0',
      WEFT_XDS_PORT: '0',
      WEFT_XDS_ADDRESS: '127.0.0.1',
      WEFT_XDS_DEBOUNCE_MS: '20',
    });
    const apiUrl = String((await cp.line((l) => l.msg === 'HTTP API listening')).url);
    const xdsAddress = String((await cp.line((l) => l.msg === 'ADS listening')).address);
    weftctlEnv = { WEFTCTL_CP_ADDRESS: apiUrl };
    writeFileSync(
      join(dir, 'dataplane.yaml'),
      'type: Dataplane\nmesh: default\nname: {{ name }}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: {{ port }}\n      tags:\n        kuma.io/service: {{ service }}\n        kuma.io/protocol: grpc\n',
    );
    const ports: Record<string, number> = {};
    // The three workloads start side by side, as they would on three machines.
    await Promise.all(
      ['redis', 'demo-app', 'gateway'].map(async (service) => {
        const name = `${service}-1`;
        ports[service] = await freePort();
        const token = await weftctl(['generate', 'dataplane-token', '--mesh', 'default', '--name', name], `weftctl generate dataplane-token --mesh default --name ${name} > ${name}.token`);
        writeFileSync(join(dir, `${name}.token`), `${token.trim()}\n`, { mode: 0o600 });
        const args = ['--dataplane-var', `name=${name}`, '--dataplane-var', `service=${service}`, '--dataplane-var', `port=${ports[service]}`];
        narrator.command(`weft-dp run --proxyless --cp-address https://${xdsAddress} --ca-cert-file cp/xds-tls.crt --dataplane-token-file ${name}.token --dataplane-file dataplane.yaml ${args.join(' ')}`);
        const dp = start([bin('weft-dp'), 'run', '--proxyless', '--cp-address', `https://${xdsAddress}`, '--ca-cert-file', join(dir, 'cp', 'xds-tls.crt'), '--dataplane-token-file', join(dir, `${name}.token`), '--dataplane-file', join(dir, 'dataplane.yaml'), ...args, '--work-dir', join(dir, name), '--ready-port', '0', '--ready-address', '127.0.0.1', '--refresh-interval', '500ms']);
        const boot = String((await dp.line((l) => typeof l.GRPC_XDS_BOOTSTRAP === 'string')).GRPC_XDS_BOOTSTRAP);
        await dp.line((l) => l.msg === 'weft-dp running');
        narrator.command(`ROLE=${service} PORT=${ports[service]} GRPC_XDS_BOOTSTRAP=${name}/grpc-xds-bootstrap.json GRPC_XDS_EXPERIMENTAL_RBAC=true node dist/src/demo/apps.js`);
        const app = start([appsScript], { ROLE: service, PORT: String(ports[service]), GRPC_XDS_BOOTSTRAP: boot, GRPC_XDS_EXPERIMENTAL_RBAC: 'true' });
        await app.line((l) => typeof l.listening === 'number');
      }),
    );
    gateway = new grpc.Client(`127.0.0.1:${ports.gateway}`, grpc.credentials.createInsecure());
    clients.push(gateway);
    record(1, title, 'three Dataplanes registered, each proxy ready');

    // 2. Traffic flows through the mesh.
    title = 'A user calls the gateway: gateway → demo-app → redis';
    narrator.step(2, title);
    narrator.say(`(a user outside the mesh calls weft.demo.Demo/Hit on the gateway, 127.0.0.1:${ports.gateway}, in plaintext)`);
    const first = await until('a count from redis', (h) => h.ok && typeof h.reply.count === 'number');
    record(2, title, describeHit(first));

    // 3. mTLS on: every hop now presents its SPIFFE identity; allow-all-default keeps traffic flowing.
    title = 'Enable mTLS with the built-in CA: traffic still flows, each hop proves who it is';
    narrator.step(3, title);
    const mesh = (mode: string) => `type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n      type: builtin\n      mode: ${mode}\n`;
    await apply('mesh.yaml', mesh('PERMISSIVE'));
    const secured = await until('replies over mTLS with the expected SPIFFE IDs', (h) => h.ok && h.reply.demoAppSaw?.[0] === 'spiffe://default/gateway' && h.reply.redisSaw?.[0] === 'spiffe://default/demo-app');
    record(3, title, describeHit(secured));

    // 4. Zero trust: without the default permission, nothing is allowed.
    title = 'Delete allow-all-default: the gateway is denied, nothing reaches redis';
    narrator.step(4, title);
    await weftctl(['delete', 'traffic-permission', 'allow-all-default', '--mesh', 'default']);
    const denied = await until('demo-app to deny the gateway', (h) => !h.ok && h.code === grpc.status.PERMISSION_DENIED && h.details.startsWith('demo-app: PERMISSION_DENIED'));
    record(4, title, describeHit(denied));

    // 5. The gateway may call anything; demo-app may not call redis yet.
    title = 'Add gateway-to-any: the gateway reaches demo-app, whose call to redis is denied';
    narrator.step(5, title);
    await apply('gateway-to-any.yaml', 'type: TrafficPermission\nmesh: default\nname: gateway-to-any\nsources:\n  - match:\n      kuma.io/service: gateway\ndestinations:\n  - match:\n      kuma.io/service: "*"\n');
    const appError = await until('redis to deny demo-app', (h) => !h.ok && h.details.startsWith('demo-app: PERMISSION_DENIED: redis: PERMISSION_DENIED'));
    record(5, title, describeHit(appError));

    // 6. Allow demo-app → redis; then STRICT: plaintext from outside the mesh is refused.
    title = 'Add demo-app-to-redis: everything works again; switch to STRICT: plaintext from outside is refused';
    narrator.step(6, title);
    await apply('demo-app-to-redis.yaml', 'type: TrafficPermission\nmesh: default\nname: demo-app-to-redis\nsources:\n  - match:\n      kuma.io/service: demo-app\ndestinations:\n  - match:\n      kuma.io/service: redis\n');
    const again = await until('a count from redis again', (h) => h.ok && typeof h.reply.count === 'number');
    await apply('mesh.yaml', mesh('STRICT'));
    const strict = await until('the mesh to keep working in STRICT mode', (h) => h.ok && h.reply.redisSaw?.[0] === 'spiffe://default/demo-app');
    narrator.say(`(a workload outside the mesh calls redis directly, 127.0.0.1:${ports.redis}, in plaintext)`);
    const outsider = new grpc.Client(`127.0.0.1:${ports.redis}`, grpc.credentials.createInsecure());
    clients.push(outsider);
    const plain = await hit(outsider, '/weft.demo.Redis/Incr');
    if (plain.ok) throw new Error(`a plaintext call from outside the mesh reached redis: ${describeHit(plain)}`);
    record(6, title, `${describeHit(again)}; in STRICT: ${describeHit(strict)}; plaintext from outside: ${describeHit(plain)}`);
    return outcomes;
  } finally {
    for (const c of clients) c.close();
    for (const p of procs.reverse()) if (p.child.exitCode === null) p.child.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 300));
    for (const p of procs) if (p.child.exitCode === null) p.child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}
