import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { buildRules, describeRules, ownedState, parseUidExclusion, resolveConfig, restoreInput, type TransparentProxySettings } from '../../src/cni/index.js';
import { isWeftError } from '../../src/core/index.js';
import { netnsMissing, sh } from '../helpers/netns.js';
import { systemRequirement } from '../helpers/require.js';

/**
 * Rule sets for several flag combinations, as `--dry-run` prints them (golden files in
 * test/cni/golden/; UPDATE_GOLDEN=1 rewrites them: review the diff).
 */
const dir = new URL('../../../test/cni/golden/', import.meta.url);
const tmp = mkdtempSync(join(tmpdir(), 'weft-rules-'));
const resolvConf = join(tmp, 'resolv.conf');
writeFileSync(resolvConf, 'search example.org\nnameserver 10.0.0.53\nnameserver fd00::53\noptions ndots:5\n');
const passwd = join(tmp, 'passwd');
writeFileSync(passwd, 'root:x:0:0::/root:/bin/sh\nkuma-dp:x:5678:5678::/:/bin/false\nenvoy:x:1337:1337::/:/bin/false\n');
after(() => rmSync(tmp, { recursive: true, force: true }));

const resolve = (s: TransparentProxySettings) => resolveConfig(s, { passwd, resolvConf }).config;

const CASES: Record<string, TransparentProxySettings> = {
  defaults: {},
  'dns-and-exclusions': {
    dpUser: 'envoy',
    redirectDns: true,
    excludeInboundPorts: [22],
    excludeOutboundPorts: [5432, 6379],
    excludeOutboundPortsForUids: ['tcp:22:1000-1010', '*:*:2000'],
    excludeInboundIps: ['10.1.0.0/16', 'fd00:1::/64'],
    excludeOutboundIps: ['169.254.169.254'],
  },
  'dual-all-dns': { dpUser: 1337, ipFamily: 'dual', redirectDns: true, redirectAllDnsTraffic: true, redirectInboundPort: 16006, redirectOutboundPort: 16001 },
  'no-inbound': { redirectInbound: false },
};

describe('transparent-proxy rules', () => {
  for (const [name, settings] of Object.entries(CASES)) {
    it(`golden: ${name}`, () => {
      const text = describeRules(resolve(settings));
      const url = new URL(`${name}.rules`, dir);
      if (process.env.UPDATE_GOLDEN === '1') writeFileSync(url, text);
      assert.equal(text, readFileSync(url, 'utf8'), 'rules differ from the golden file (UPDATE_GOLDEN=1 to accept, after review)');
    });
  }

  it('every rule carries the ownership comment and every chain the WEFT_ prefix', () => {
    const cfg = resolve(CASES['dns-and-exclusions']!);
    for (const f of ['ipv4', 'ipv6'] as const) {
      for (const t of buildRules(cfg, f).tables) {
        assert.ok(t.chains.every((c) => c.startsWith('WEFT_')));
        for (const r of t.rules) assert.match(r, / -m comment --comment "weft\/transparent-proxy" -j /);
      }
    }
  });

  it('redirecting IPv6 notes the Dataplane setting it needs; IPv4 alone needs nothing', () => {
    assert.deepEqual(resolveConfig({}, { passwd, resolvConf }).notes, []);
    const dual = resolveConfig({ ipFamily: 'dualstack' }, { passwd, resolvConf });
    assert.equal(dual.config.ipFamily, 'dual');
    assert.match(dual.notes.join('\n'), /ipFamilyMode: DualStack/);
    assert.match(resolveConfig({ ipFamily: 'ipv6' }, { passwd, resolvConf }).notes.join('\n'), /ipFamilyMode: IPv6/);
  });

  it('the data-plane user defaults to kuma-dp, else UID 5678; root and unknown users are refused', () => {
    assert.equal(resolveConfig({}, { passwd, resolvConf }).config.dpUid, 5678);
    const none = resolveConfig({}, { passwd: join(tmp, 'missing'), resolvConf });
    assert.equal(none.config.dpUid, 5678);
    assert.match(none.notes[0]!, /no user "kuma-dp"/);
    const refused = (s: TransparentProxySettings, field: string, message: RegExp) => {
      assert.throws(
        () => resolveConfig(s, { passwd, resolvConf }),
        (e: unknown) => isWeftError(e) && e.violations.some((v) => v.field === field && message.test(v.message)),
      );
    };
    refused({ dpUser: 'root' }, 'dpUser', /root/);
    refused({ dpUser: 'nobody-here' }, 'dpUser', /no such user/);
    refused({ redirectInboundPort: 0 }, 'redirectInboundPort', /./);
    refused({ excludeOutboundIps: ['10.0.0.0/33'] }, 'excludeOutboundIps[0]', /IP address or CIDR/);
    refused({ redirectOutboundPort: 15006 }, 'redirectOutboundPort', /differ/);
    assert.throws(() => parseUidExclusion('tcp:22'), /must be \[tcp\|udp\|\*:\]PORTS:UIDS/);
    assert.deepEqual(parseUidExclusion('udp:53:1000-1010'), { protocol: 'udp', ports: '53', uids: '1000-1010' });
  });

  it('replacing: removes our earlier jumps and chains, keeps everything else', () => {
    const saved = [
      '*nat',
      ':PREROUTING ACCEPT [0:0]',
      ':OUTPUT ACCEPT [0:0]',
      ':OTHER - [0:0]',
      ':WEFT_OUTBOUND - [0:0]',
      ':WEFT_DNS - [0:0]',
      '-A OUTPUT -p tcp -m comment --comment other -j OTHER',
      '-A OUTPUT -p tcp -m comment --comment weft/transparent-proxy -j WEFT_OUTBOUND',
      '-A OUTPUT -p udp -m udp --dport 53 -m comment --comment weft/transparent-proxy -j WEFT_DNS',
      '-A WEFT_OUTBOUND -j RETURN',
      'COMMIT',
    ].join('\n');
    const input = restoreInput(ownedState(saved), buildRules(resolve({}), 'ipv4').tables);
    assert.match(input, /^-D OUTPUT -p tcp -m comment --comment weft\/transparent-proxy -j WEFT_OUTBOUND$/m);
    assert.match(input, /^-X WEFT_DNS$/m, 'a chain of the old install that the new one does not use is removed');
    assert.doesNotMatch(input, /OTHER/, 'rules and chains that are not ours are not touched');
    assert.equal(restoreInput(ownedState(saved), []).match(/^-A /gm), null, 'uninstall adds nothing');
  });
});

describe('every golden rule set is accepted by the real iptables-restore', systemRequirement('network namespaces and iptables', netnsMissing()), () => {
  const ns = `wrules-${process.pid % 10000}`;
  it('iptables-restore --test, both families, both backends', () => {
    sh('ip', ['netns', 'add', ns]);
    try {
      for (const [name, settings] of Object.entries(CASES)) {
        const cfg = { ...resolve(settings), ipFamily: 'dual' as const };
        for (const family of ['ipv4', 'ipv6'] as const) {
          const input = restoreInput(new Map(), buildRules(cfg, family).tables);
          for (const backend of ['nft', 'legacy']) {
            const cmd = `${family === 'ipv4' ? 'iptables' : 'ip6tables'}-${backend}-restore`;
            assert.doesNotThrow(() => sh('ip', ['netns', 'exec', ns, cmd, '--test', '--noflush'], input), `${name} ${family} ${backend}`);
          }
        }
      }
    } finally {
      sh('ip', ['netns', 'del', ns]);
    }
  });
});
