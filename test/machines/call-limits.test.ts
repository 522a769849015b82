/**
 * What a call keeps stays bounded: after LIMITS.turns turns the caller's next
 * words get the closing line, and the call ends (its record, its snapshot and the
 * history sent to the agent never grow past that).
 */
import { createActor, fromPromise, waitFor } from 'xstate';
import { describe, expect, it } from 'vitest';
import { callMachine, LIMITS, PHRASES, type AgentTurnInput, type VoiceInput, type VoiceOutput, type WrittenReply } from '../../machines/call.machine.ts';

/** The machine with instant actors: the agent echoes, speech is the phone's voice. */
const instant = callMachine.provide({
  actors: {
    askAgent: fromPromise(async ({ input }: { input: AgentTurnInput }) => ({ text: `Answer to ${input.message}`, firstChunkAt: 1, at: 1 })),
    voicePrompt: fromPromise(async ({ input }: { input: VoiceInput }): Promise<VoiceOutput> => ({ at: 2, ...(input.prompt.kind === 'reply' ? { pieces: [{ text: input.prompt.text }], more: false } : {}) })),
    collectReply: fromPromise(async (): Promise<WrittenReply> => ({ pieces: [], completeAt: 3 })),
  },
});

describe('the turn limit', () => {
  it(`ends the call politely at the caller's words after ${LIMITS.turns} turns, with the agent's history bounded`, async () => {
    const actor = createActor(instant, { input: { callSid: `CA${'2'.repeat(32)}`, from: '+1', to: '+2', at: 0, agentTimeoutMs: 5_000 } });
    let longestHistory = 0;
    actor.start();
    for (let i = 0; i < LIMITS.turns; i++) {
      await waitFor(actor, (s) => s.matches('listening'));
      actor.send({ type: 'SPEECH', text: `question ${i}`, at: 10 + i });
      await waitFor(actor, (s) => s.matches('listening'));
      longestHistory = Math.max(longestHistory, actor.getSnapshot().context.turns.length);
    }
    actor.send({ type: 'SPEECH', text: 'one more question', at: 10_000 });
    const end = await waitFor(actor, (s) => s.matches('terminating'));
    expect(end.context.prompt.text).toBe(PHRASES.goodbyeTurns);
    expect(end.context.endReason).toBe('turns');
    expect(end.context.turns).toHaveLength(LIMITS.turns);
    expect(longestHistory).toBe(LIMITS.turns);
    actor.stop();
  });

  it('ends it the same way when the caller presses a key past the limit', async () => {
    const actor = createActor(instant, { input: { callSid: `CA${'3'.repeat(32)}`, from: '+1', to: '+2', at: 0, agentTimeoutMs: 5_000 } });
    actor.start();
    for (let i = 0; i < LIMITS.turns; i++) {
      await waitFor(actor, (s) => s.matches('listening'));
      actor.send({ type: 'DIGITS', digits: String(i % 10), at: 10 + i });
    }
    await waitFor(actor, (s) => s.matches('listening'));
    actor.send({ type: 'DIGITS', digits: '1', at: 10_000 });
    expect((await waitFor(actor, (s) => s.matches('terminating'))).context.endReason).toBe('turns');
    actor.stop();
  });
});
