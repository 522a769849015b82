/**
 * The record projection: what the store keeps of a call for people to read,
 * derived from the machine's snapshot. Fields that do not apply are left out, not
 * set to undefined (Firestore refuses undefined values).
 */
import { describe, expect, it } from 'vitest';
import type { SnapshotFrom } from 'xstate';
import { callMachine, type CallEvent, type CallMachine } from '../../machines/call.machine.ts';
import { recordOf } from '../../src/engine/call-record.ts';
import { PureSteps } from '../../src/engine/pure-steps.ts';

const CALL_SID = 'CA0123456789abcdef0123456789abcdef';
const INPUT = { callSid: CALL_SID, from: '+14155551234', to: '+16175551212', at: 1_000, agentTimeoutMs: 8_000 };
const pure = new PureSteps(callMachine);

function after(...events: Array<CallEvent | { type: string; output?: unknown; error?: unknown }>): SnapshotFrom<CallMachine> {
  let snapshot = pure.initial(INPUT);
  for (const event of events) snapshot = pure.next(snapshot, event as CallEvent);
  return snapshot;
}

const greeted = { type: 'xstate.done.actor.voice', output: { at: 1_100 } };
const spoke = { type: 'SPEECH', text: 'What time do you open?', confidence: 0.9, at: 2_000 };

describe('the call record', () => {
  it('of a call in progress: who called whom and when, its state, turns and path, status in-progress, nothing else', () => {
    const snapshot = after(greeted, spoke);
    const record = recordOf(snapshot);
    expect(record).toStrictEqual({
      callSid: CALL_SID,
      from: '+14155551234',
      to: '+16175551212',
      startedAt: 1_000,
      status: 'in-progress',
      state: 'thinking',
      turns: snapshot.context.turns,
      path: snapshot.context.path,
    });
    expect(record.turns).toMatchObject([{ index: 0, caller: 'What time do you open?', confidence: 0.9, startedAt: 2_000 }]);
    expect(record.path.map((step) => `${step.state}|${step.event}`)).toStrictEqual([
      'greeting|CALL_STARTED',
      'speaking|xstate.init',
      'listening|xstate.done.actor.voice',
      'thinking|SPEECH',
    ]);
  });

  it('carries the lease of the instance working on it, when there is one', () => {
    const worker = { instance: 'instance-a', until: 6_000 };
    expect(recordOf(after(greeted, spoke), worker).worker).toStrictEqual(worker);
    expect(recordOf(after(greeted, spoke))).not.toHaveProperty('worker');
  });

  it("keeps the last error, and once the call is over Twilio's final status, its end, duration and why it ended", () => {
    const failed = after(greeted, spoke, { type: 'xstate.error.actor.agent', error: new Error('agent unreachable') });
    expect(recordOf(failed).lastError).toBe('agent: agent unreachable');
    const record = recordOf(pure.next(failed, { type: 'HANGUP', status: 'completed', durationSec: 41, at: 42_000 }));
    expect(record).toMatchObject({ status: 'completed', state: 'ended', endedAt: 42_000, durationSec: 41, endReason: 'hangup', lastError: 'agent: agent unreachable' });
  });

  it('says a goodbye ended the call, not the hang-up that followed it', () => {
    const said = after(greeted, { type: 'SPEECH', text: 'Goodbye', at: 2_000 }, { type: 'xstate.done.actor.voice', output: { at: 2_100 } });
    expect(recordOf(said)).toMatchObject({ state: 'terminating', endReason: 'goodbye', status: 'in-progress' });
    expect(recordOf(pure.next(said, { type: 'HANGUP', status: 'completed', at: 3_000 }))).toMatchObject({ endReason: 'goodbye', status: 'completed', durationSec: 2 });
  });

  it('has no undefined values at all', () => {
    for (const snapshot of [after(), after(greeted), after(greeted, spoke), after(greeted, { type: 'HANGUP', status: 'busy', at: 2_000 })]) {
      const record = recordOf(snapshot);
      expect(Object.entries(record).filter(([, value]) => value === undefined)).toStrictEqual([]);
    }
  });
});
