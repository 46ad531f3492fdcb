import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { insightTable, type InsightStatus } from '../../src/cli/output.js';

describe('weftctl inspect dataplanes table', () => {
  const now = Date.parse('2026-12-02T12:00:00Z');
  const ago = (s: number) => new Date(now - s * 1000).toISOString();

  it('rule 24: shows, per type, the last response over 4 MiB with its size and age; "-" when there was none', () => {
    const status: InsightStatus = {
      connected: true,
      connectedSince: ago(600),
      controlPlaneInstance: 'cp-1',
      types: {
        CDS: { lastSentVersion: 'a', lastAckedVersion: 'a', lastOversized: { bytes: 5 * 1048576 + 300_000, at: ago(90) } },
        LDS: { lastSentVersion: 'b', lastAckedVersion: 'b', lastOversized: { bytes: 4.5 * 1048576, at: ago(7200) } },
        EDS: { lastSentVersion: 'c', lastAckedVersion: 'c' },
      },
    };
    const quiet: InsightStatus = { connected: false, disconnectedAt: ago(30), types: { CDS: { lastSentVersion: 'a' } } };
    const [head, big, small] = insightTable(
      [
        { dataplane: { mesh: 'default', name: 'big' }, status },
        { dataplane: { mesh: 'default', name: 'small' }, status: quiet },
      ],
      now,
    )
      .trimEnd()
      .split('\n');
    assert.match(head!, /^MESH\s+NAME\s+STATUS\s+SINCE\s+CP\s+CDS\s+EDS\s+LDS\s+RDS\s+SDS\s+OVER 4 MiB\s+LAST NACK$/);
    assert.match(big!, /^default\s+big\s+Online\s+10m\s+cp-1\s+ACK\s+ACK\s+ACK\s+-\s+-\s+CDS 5\.3 MiB 90s ago, LDS 4\.5 MiB 2h ago\s+-$/);
    assert.match(small!, /^default\s+small\s+Offline\s+30s\s+-\s+sent\s+-\s+-\s+-\s+-\s+-\s+-$/);
  });

  it('rule 5: the last NACK says when the rejected config is sent again, while it is still rejected and the time is ahead', () => {
    const nack = (retryIn: number) => ({ message: 'Error adding/updating listener(s) http: bad port', at: ago(60), retryAt: new Date(now + retryIn * 1000).toISOString() });
    const rows = [
      { name: 'waiting', types: { LDS: { lastSentVersion: 'b', lastNack: nack(40) } } },
      { name: 'long', types: { LDS: { lastSentVersion: 'b', lastNack: nack(300) } } },
      { name: 'due', types: { LDS: { lastSentVersion: 'b', lastNack: nack(-1) } } },
      { name: 'taken', types: { LDS: { lastSentVersion: 'c', lastAckedVersion: 'c', lastNack: nack(40) } } },
    ];
    const lines = insightTable(
      rows.map(({ name, types }) => ({ dataplane: { mesh: 'default', name }, status: { connected: true, connectedSince: ago(600), types } })),
      now,
    )
      .trimEnd()
      .split('\n')
      .slice(1);
    assert.match(lines[0]!, /NACK\s+-\s+-\s+-\s+LDS: Error adding\/updating listener\(s\) http: bad port \(again in 40s\)$/);
    assert.match(lines[1]!, /LDS: Error adding\/updating listener\(s\) http: bad port \(again in 5m\)$/);
    assert.match(lines[2]!, /LDS: Error adding\/updating listener\(s\) http: bad port$/, 'its time has come: it is on its way');
    assert.match(lines[3]!, /ACK\s+-\s+-\s+-\s+LDS: Error adding\/updating listener\(s\) http: bad port$/, 'a newer config was taken');
  });

  it('a proxy whose connection has left a response untaken for a second or more shows as behind, with how much and for how long', () => {
    const rows = [
      { name: 'slow', unwritten: { bytes: 1_234_567, since: ago(42) } },
      { name: 'trickle', unwritten: { bytes: 900, since: ago(3) } },
      { name: 'writing', unwritten: { bytes: 5_000_000, since: new Date(now - 200).toISOString() } },
      { name: 'idle', unwritten: undefined },
    ];
    const lines = insightTable(
      rows.map(({ name, unwritten }) => ({ dataplane: { mesh: 'default', name }, status: { connected: true, connectedSince: ago(600), unwritten, types: {} } })),
      now,
    )
      .trimEnd()
      .split('\n')
      .slice(1);
    assert.match(lines[0]!, /^default\s+slow\s+Online, behind: 1\.2 MB for 42s\s+10m\s/);
    assert.match(lines[1]!, /^default\s+trickle\s+Online, behind: 1 KB for 3s\s+10m\s/);
    assert.match(lines[2]!, /^default\s+writing\s+Online\s+10m\s/, 'a write under way is not being behind');
    assert.match(lines[3]!, /^default\s+idle\s+Online\s+10m\s/);
  });
});
