/**
 * The lease rules, on snapshots the machine itself produces: which states mean
 * work is under way in this process (and so a lease to hold), and when another
 * instance's lease still stands. Snapshots come from the machine's pure
 * transitions (the invoked actors' results given as the events they send); a
 * live actor shows the one thing a pure step cannot: background work finishing.
 */
import { describe, expect, it } from 'vitest';
import { createActor, fromPromise, waitFor, type SnapshotFrom } from 'xstate';
import { callMachine, type AgentTurnOutput, type CallEvent, type CallMachine, type VoiceOutput, type WrittenReply } from '../../machines/call.machine.ts';
import { busyInBackground, heldElsewhere, isWorking, LEASE_MS, LEASE_RENEW_MS, leaseFor, needsLease } from '../../src/engine/lease.ts';
import { PureSteps } from '../../src/engine/pure-steps.ts';

const INPUT = { callSid: 'CA0123456789abcdef0123456789abcdef', from: '+14155551234', to: '+16175551212', at: 1_000, agentTimeoutMs: 8_000 };
type Snapshot = SnapshotFrom<CallMachine>;
const pure = new PureSteps(callMachine);

function after(...events: Array<CallEvent | { type: `xstate.done.actor.${string}`; output: unknown }>): Snapshot {
  let snapshot = pure.initial(INPUT);
  for (const event of events) snapshot = pure.next(snapshot, event as CallEvent);
  return snapshot;
}

const greeting: VoiceOutput = { at: 1_100 };
const answer: AgentTurnOutput = { text: 'Hi there.', firstChunkAt: 2_100, at: 2_200 };
const firstVoiced: VoiceOutput = { at: 2_300, pieces: [{ text: 'Hi there.' }], more: true };
const greeted = { type: 'xstate.done.actor.voice', output: greeting } as const;
const spoke = { type: 'SPEECH', text: 'Hello', at: 2_000 } as const;
const answered = { type: 'xstate.done.actor.agent', output: answer } as const;
const firstPieces = { type: 'xstate.done.actor.voice', output: firstVoiced } as const;

const rules = (snapshot: Snapshot) => ({
  state: snapshot.value,
  working: isWorking(snapshot),
  background: busyInBackground(snapshot),
  lease: needsLease(snapshot),
});

describe('work under way, by state', () => {
  it('voicing the greeting, the agent answering and voicing a reply are work: the instance holds the lease', () => {
    expect(rules(after())).toStrictEqual({ state: 'speaking', working: true, background: false, lease: true });
    expect(rules(after(greeted, spoke))).toStrictEqual({ state: 'thinking', working: true, background: false, lease: true });
    expect(rules(after(greeted, spoke, answered))).toStrictEqual({ state: 'speaking', working: true, background: false, lease: true });
    expect(rules(after(greeted, spoke, { type: 'SLOW', at: 5_000 }))).toMatchObject({ state: 'thinking', working: true, lease: true });
  });

  it('listening and terminating are not: nothing to hold', () => {
    expect(rules(after(greeted))).toStrictEqual({ state: 'listening', working: false, background: false, lease: false });
    const ending = after(greeted, { type: 'SPEECH', text: 'goodbye', at: 2_000 }, { type: 'xstate.done.actor.voice', output: { at: 2_100 } });
    expect(rules(ending)).toStrictEqual({ state: 'terminating', working: false, background: false, lease: false });
  });

  it('an ended call is not, whatever it was doing when the caller hung up', () => {
    expect(rules(after(greeted, spoke, { type: 'HANGUP', status: 'completed', at: 3_000 }))).toStrictEqual({ state: 'ended', working: false, background: false, lease: false });
  });

  it('replying renders at once, but the rest of the answer is still being written: background work holds the lease', () => {
    expect(rules(after(greeted, spoke, answered, firstPieces))).toStrictEqual({ state: 'replying', working: false, background: true, lease: true });
  });

  it('once the whole answer is stored, replying holds nothing', async () => {
    let writeRest!: (reply: WrittenReply) => void;
    const machine = callMachine.provide({
      actors: {
        askAgent: fromPromise(async () => answer),
        voicePrompt: fromPromise(async ({ input }) => (input.prompt.kind === 'reply' ? firstVoiced : greeting)),
        collectReply: fromPromise(() => new Promise<WrittenReply>((resolve) => (writeRest = resolve))),
      },
    });
    const actor = createActor(machine, { input: INPUT }).start();
    await waitFor(actor, (s) => s.matches('listening'));
    actor.send(spoke);
    const replying = await waitFor(actor, (s) => s.matches('replying'));
    expect(rules(replying)).toMatchObject({ background: true, lease: true });
    writeRest({ pieces: ['Hi there.', 'How can I help?'], completeAt: 2_400 });
    const stored = await waitFor(actor, (s) => s.context.turns[0]?.written !== undefined);
    expect(rules(stored)).toStrictEqual({ state: 'replying', working: false, background: false, lease: false });
    actor.stop();
  });
});

describe("another instance's lease", () => {
  const NOW = 50_000;

  it('is written for LEASE_MS from now and renewed often enough to survive one missed renewal', () => {
    expect(leaseFor('instance-a', NOW)).toStrictEqual({ instance: 'instance-a', until: NOW + LEASE_MS });
    expect(2 * LEASE_RENEW_MS).toBeLessThan(LEASE_MS);
  });

  it('holds the call while it runs, and stops holding it the moment it lapses', () => {
    const lease = leaseFor('instance-a', NOW);
    expect(heldElsewhere(lease, 'instance-b', NOW)).toBe(true);
    expect(heldElsewhere(lease, 'instance-b', NOW + LEASE_MS - 1)).toBe(true);
    expect(heldElsewhere(lease, 'instance-b', NOW + LEASE_MS)).toBe(false);
    expect(heldElsewhere(lease, 'instance-b', NOW + LEASE_MS + 1)).toBe(false);
  });

  it('is never held against its own instance, and no lease holds nothing', () => {
    expect(heldElsewhere(leaseFor('instance-a', NOW), 'instance-a', NOW)).toBe(false);
    expect(heldElsewhere(undefined, 'instance-b', NOW)).toBe(false);
  });
});
