import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { run } from '../helpers/bin.js';
import { inNs, netnsMissing, TwoHosts } from '../helpers/netns.js';
import { systemRequirement } from '../helpers/require.js';

/**
 * `weftctl install|uninstall transparent-proxy` in real network namespaces: two test hosts joined
 * by a veth pair, real iptables, real connections made as the app's user and as the data-plane
 * user. Listeners on 15001 / 15006 / 15053 stand where Envoy and weft-dp's DNS would be; each
 * answers with its own label, so every assertion says where a connection really landed.
 */
const APP_UID = 1000;
const DP_UID = 5678;
const weftctl = new URL('../../src/cmd/weftctl.js', import.meta.url).pathname;

function installArgs(extra: string[] = []): string[] {
  return ['install', 'transparent-proxy', '--dp-user', String(DP_UID), '--redirect-dns', '--exclude-outbound-ports', '2222', ...extra];
}

async function weftctlIn(ns: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return run('ip', ['netns', 'exec', ns, process.execPath, weftctl, ...args], { timeoutMs: 30_000 });
}

const ours = (saved: string) => saved.split('\n').filter((l) => l.includes('weft/transparent-proxy') || /^:WEFT_/.test(l) || /^-A WEFT_/.test(l));

for (const backend of ['nft', 'legacy'] as const) {
  describe(`transparent proxy in network namespaces (iptables ${backend})`, systemRequirement('network namespaces and iptables', netnsMissing()), () => {
    const hosts = new TwoHosts(backend === 'nft' ? 'n' : 'l', backend === 'nft' ? 1 : 2);
    const save = (family: 'ipv4' | 'ipv6' = 'ipv4') => inNs(hosts.app, `${family === 'ipv4' ? 'iptables' : 'ip6tables'}-${backend}-save`, []);
    const family = () => (hosts.ipv6 ? 'dual' : 'ipv4');

    before(async () => {
      hosts.create();
      // Where the proxy and the DNS server would be, and the real app, on the app's host...
      await hosts.serve(hosts.app, [
        ['::', 15001, 'outbound-redirect', 'tcp'],
        ['::', 15006, 'inbound-redirect', 'tcp'],
        ['127.0.0.1', 15053, 'dns-redirect', 'udp'],
        ['::', 8080, 'app', 'tcp'],
      ]);
      // ...and a server, a port that is excluded, and a resolver on the other host.
      await hosts.serve(hosts.peer, [
        ['::', 8080, 'peer', 'tcp'],
        ['::', 2222, 'peer-excluded', 'tcp'],
        [hosts.v4.peer, 53, 'peer-dns', 'udp'],
      ]);
      // Rules of someone else, which must survive install and uninstall.
      inNs(hosts.app, `iptables-${backend}`, ['-t', 'nat', '-N', 'OTHER_CHAIN']);
      inNs(hosts.app, `iptables-${backend}`, ['-t', 'nat', '-A', 'OTHER_CHAIN', '-p', 'tcp', '--dport', '9999', '-j', 'RETURN']);
      inNs(hosts.app, `iptables-${backend}`, ['-t', 'nat', '-A', 'OUTPUT', '-p', 'tcp', '--dport', '9999', '-m', 'comment', '--comment', 'someone else', '-j', 'OTHER_CHAIN']);
    });
    after(() => hosts.destroy());

    it('before install, the app reaches the other host directly', async () => {
      assert.equal(await hosts.call(hosts.app, APP_UID, 'tcp', hosts.v4.peer, 8080), 'peer');
    });

    it('install verifies that redirection works, and reports the backend', async () => {
      const r = await weftctlIn(hosts.app, [...installArgs(['--ip-family', family()]), '--iptables-mode', backend]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`transparent proxy installed \\(iptables ${backend}, `));
      // TCP redirection was proven; DNS not, as this test's DNS stand-in already holds port 15053.
      assert.match(r.stdout, /redirection only partly verified/);
      assert.match(r.stderr, /note: ipv4: DNS redirection not verified: port 15053 is in use/);
      assert.doesNotMatch(r.stderr, /outbound redirection not verified/);
    });

    it('outbound TCP of the app lands on 15001; the data-plane user and excluded ports go direct', async () => {
      assert.equal(await hosts.call(hosts.app, APP_UID, 'tcp', hosts.v4.peer, 8080), 'outbound-redirect');
      assert.equal(await hosts.call(hosts.app, DP_UID, 'tcp', hosts.v4.peer, 8080), 'peer');
      assert.equal(await hosts.call(hosts.app, APP_UID, 'tcp', hosts.v4.peer, 2222), 'peer-excluded');
      assert.equal(await hosts.call(hosts.app, APP_UID, 'tcp', '127.0.0.1', 8080), 'app', 'loopback traffic of the app is left alone');
    });

    it("inbound TCP to the app's port lands on 15006", async () => {
      assert.equal(await hosts.call(hosts.peer, 0, 'tcp', hosts.v4.app, 8080), 'inbound-redirect');
    });

    it('DNS to the resolver lands on 15053, except the data-plane user’s own queries', async () => {
      assert.equal(await hosts.call(hosts.app, APP_UID, 'udp', hosts.v4.peer, 53), 'dns-redirect');
      assert.equal(await hosts.call(hosts.app, DP_UID, 'udp', hosts.v4.peer, 53), 'peer-dns');
    });

    it('IPv6 the same, where the kernel allows it', async (t) => {
      if (!hosts.ipv6) {
        assert.notEqual(process.env.WEFT_REQUIRE_ALL, '1', 'IPv6 is required (WEFT_REQUIRE_ALL=1) but this kernel has none');
        return t.skip('no IPv6 in this kernel');
      }
      assert.equal(await hosts.call(hosts.app, APP_UID, 'tcp', hosts.v6.peer, 8080), 'outbound-redirect');
      assert.equal(await hosts.call(hosts.app, DP_UID, 'tcp', hosts.v6.peer, 8080), 'peer');
      assert.equal(await hosts.call(hosts.peer, 0, 'tcp', hosts.v6.app, 8080), 'inbound-redirect');
    });

    it('installing twice leaves one set of rules; rules of others survive', async () => {
      const first = ours(save());
      const r = await weftctlIn(hosts.app, [...installArgs(['--ip-family', family()]), '--iptables-mode', backend]);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(ours(save()), first);
      assert.match(save(), /someone else/);
      assert.match(save(), /^:OTHER_CHAIN/m);
    });

    it('uninstall removes exactly our rules and chains, and traffic goes direct again', async () => {
      const r = await weftctlIn(hosts.app, ['uninstall', 'transparent-proxy', '--iptables-mode', backend]);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(ours(save()), []);
      if (hosts.ipv6) assert.deepEqual(ours(save('ipv6')), []);
      assert.match(save(), /someone else/);
      assert.match(save(), /-A OTHER_CHAIN -p tcp -m tcp --dport 9999 -j RETURN/);
      assert.equal(await hosts.call(hosts.app, APP_UID, 'tcp', hosts.v4.peer, 8080), 'peer');
      assert.equal(await hosts.call(hosts.peer, 0, 'tcp', hosts.v4.app, 8080), 'app');
    });

    it('install fails loudly, and leaves nothing, when the rules do not capture traffic', async () => {
      // A rule of someone else ahead of ours that lets all TCP through un-NATed.
      inNs(hosts.app, `iptables-${backend}`, ['-t', 'nat', '-I', 'OUTPUT', '1', '-p', 'tcp', '-m', 'comment', '--comment', 'bypass', '-j', 'ACCEPT']);
      try {
        const r = await weftctlIn(hosts.app, [...installArgs(), '--iptables-mode', backend]);
        assert.equal(r.code, 1);
        assert.match(r.stderr, /traffic is not redirected, so they were removed again: ipv4: a connection to \S+ was not redirected to port 15001/);
        assert.deepEqual(ours(save()), []);
      } finally {
        inNs(hosts.app, `iptables-${backend}`, ['-t', 'nat', '-D', 'OUTPUT', '-p', 'tcp', '-m', 'comment', '--comment', 'bypass', '-j', 'ACCEPT']);
      }
    });

    it(`without --iptables-mode, the backend already holding the host's rules (${backend}) is used`, async () => {
      const r = await weftctlIn(hosts.app, installArgs());
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`\\(iptables ${backend}, ipv4\\)`));
      assert.ok(ours(save()).length > 0, `the rules are in the ${backend} tables`);
      const u = await weftctlIn(hosts.app, ['uninstall', 'transparent-proxy']);
      assert.equal(u.code, 0, u.stderr);
      assert.match(u.stdout, new RegExp(`removed \\(iptables ${backend}\\)`));
      assert.deepEqual(ours(save()), []);
    });

    it('--dry-run prints the rules and changes nothing', async () => {
      const r = await weftctlIn(hosts.app, [...installArgs(), '--dry-run']);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^-A OUTPUT -p tcp -m comment --comment "weft\/transparent-proxy" -j WEFT_OUTBOUND$/m);
      assert.deepEqual(ours(save()), []);
    });

    it('bad flags name the field and change nothing', async () => {
      const r = await weftctlIn(hosts.app, ['install', 'transparent-proxy', '--dp-user', 'root']);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /dpUser: must not be root/);
      const p = await weftctlIn(hosts.app, ['install', 'transparent-proxy', '--dp-user', '5678', '--exclude-outbound-ports', '70000']);
      assert.equal(p.code, 1);
      assert.match(p.stderr, /excludeOutboundPorts\[0\]: must be at most 65535/);
      assert.deepEqual(ours(save()), []);
    });
  });
}
