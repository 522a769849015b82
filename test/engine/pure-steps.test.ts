/**
 * The engine's pure steps compute exactly what XState's own pure functions
 * (`initialTransition`, `transition`) compute, for a whole call, and start none
 * of the machine's actors: effects run only after a commit.
 */
import { describe, expect, it } from 'vitest';
import { fromPromise, initialTransition, transition, type SnapshotFrom } from 'xstate';
import { callMachine, type CallEvent, type CallMachine } from '../../machines/call.machine.ts';
import { PureSteps } from '../../src/engine/pure-steps.ts';

const INPUT = { callSid: 'CA0123456789abcdef0123456789abcdef', from: '+14155551234', to: '+16175551212', at: 1_000, agentTimeoutMs: 8_000 };

/** A whole call: greeting, a reply in two parts with a slow wait, a silence, digits, a failed turn, goodbye, hang-up. */
const CALL: Array<CallEvent | { type: string; output?: unknown; error?: unknown }> = [
  { type: 'xstate.done.actor.voice', output: { at: 1_100, audio: '/audio/phrase/greeting' } },
  { type: 'SPEECH', text: 'What time do you open?', confidence: 0.9, at: 2_000 },
  { type: 'SLOW', at: 5_000 },
  { type: 'xstate.done.actor.agent', output: { text: 'We open at nine.', firstChunkAt: 5_100, at: 5_200 } },
  { type: 'xstate.done.actor.voice', output: { at: 5_300, pieces: [{ text: 'We open at nine.', audio: '/a/t0' }], more: true } },
  { type: 'xstate.done.actor.rest', output: { pieces: ['We open at nine.', 'Until five.'], completeAt: 5_400 } },
  { type: 'PLAYED', at: 6_000 },
  { type: 'xstate.done.actor.voice', output: { at: 6_100, pieces: [{ text: 'Until five.', audio: '/a/t0p1' }], more: false } },
  { type: 'SILENCE', at: 12_000 },
  { type: 'xstate.done.actor.voice', output: { at: 12_100 } },
  { type: 'DIGITS', digits: '1', at: 13_000 },
  { type: 'xstate.error.actor.agent', error: new Error('agent unreachable') },
  { type: 'xstate.done.actor.voice', output: { at: 13_200 } },
  { type: 'SPEECH', text: 'Goodbye', at: 14_000 },
  { type: 'xstate.done.actor.voice', output: { at: 14_100 } },
  { type: 'HANGUP', status: 'completed', durationSec: 13, at: 15_000 },
];

type Snapshot = SnapshotFrom<CallMachine>;

describe('the pure steps', () => {
  it("reach the same snapshot as XState's initialTransition and transition, step by step through a whole call", () => {
    const pure = new PureSteps(callMachine);
    let ours: Snapshot = pure.initial(INPUT);
    let xstates = initialTransition(callMachine, INPUT)[0];
    const states: string[] = [];
    for (const event of [undefined, ...CALL]) {
      if (event) {
        ours = pure.next(ours, event as CallEvent);
        xstates = transition(callMachine, xstates, event as CallEvent)[0];
      }
      expect(callMachine.getPersistedSnapshot(ours)).toStrictEqual(callMachine.getPersistedSnapshot(xstates));
      states.push(String(ours.value));
    }
    expect(states).toStrictEqual([
      'speaking', 'listening', 'thinking', 'thinking', 'speaking', 'replying', 'replying', 'speaking', 'listening',
      'speaking', 'listening', 'thinking', 'speaking', 'listening', 'speaking', 'terminating', 'ended',
    ]);
    expect(ours.status).toBe('done');
  });

  it("start none of the machine's actors", () => {
    const started: string[] = [];
    const recording = (name: string) =>
      fromPromise<never, unknown>(() => {
        started.push(name);
        return new Promise<never>(() => {});
      });
    const machine = callMachine.provide({ actors: { askAgent: recording('askAgent'), voicePrompt: recording('voicePrompt'), collectReply: recording('collectReply') } as never });
    const pure = new PureSteps(machine);
    let snapshot = pure.initial(INPUT);
    for (const event of CALL) snapshot = pure.next(snapshot, event as CallEvent);
    expect(snapshot.value).toBe('ended');
    expect(started).toStrictEqual([]);
  });

  it('leave the snapshot they step from as it was', () => {
    const pure = new PureSteps(callMachine);
    const listening = pure.next(pure.initial(INPUT), CALL[0] as CallEvent);
    const before = JSON.stringify(callMachine.getPersistedSnapshot(listening));
    pure.next(listening, CALL[1] as CallEvent);
    expect(JSON.stringify(callMachine.getPersistedSnapshot(listening))).toBe(before);
  });
});
