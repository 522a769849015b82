/**
 * The call machine as a test model of a ConversationRelay call: the same model
 * machine as call-model.ts (invokes turned into events), started with
 * `replyDelivery: 'streamed'`, and offered only the events a relay call has.
 *
 * What a relay call has, and what it does not:
 * - The caller speaks (a final `prompt`), says nothing (an empty final `prompt`),
 *   presses a key (`dtmf`), speaks over a reply (`interrupt`, while its text is
 *   streaming or while Twilio still speaks the last of it), hangs up
 *   (`/call-status`); the socket drops and Twilio requests the `<Connect action>`
 *   URL (RECONNECTED); the agent is silent past the wait (SLOW), or past the
 *   turn's deadline (a late SLOW).
 * - No PLAYED, no `collectReply`: the reply streams to the caller in one pass
 *   through `speaking`. No speech synthesis: the phone speaks the text, so a
 *   phrase is "voiced" at once (nothing can happen while it is) and a streamed
 *   reply never fails to voice (an agent that breaks mid-answer cuts it short).
 * - SLOW comes only while the agent has not answered: the session's wait starts
 *   when the turn does and stops at the agent's first words.
 *
 * @see ../../src/transports/relay/relay-session.ts
 * @see https://www.twilio.com/docs/voice/conversationrelay/websocket-messages
 */
import { transition } from 'xstate';
import type { CallContext, CallInput } from '../../machines/call.machine.ts';
import {
  AGENT_REPLY,
  CALLER_GOODBYE,
  CALLER_QUESTION,
  createCallModel,
  LATE,
  MODEL_INPUT,
  modelMachine,
  replay,
  type ModelEvent,
  type ModelSnapshot,
} from './call-model.ts';

export const RELAY_INPUT: CallInput = { ...MODEL_INPUT, replyDelivery: 'streamed' };

/** The agent's first words: what it writes at once; the rest of AGENT_REPLY follows. */
export const AGENT_FIRST_WORDS = 'We are open ';
/** What the caller heard of the reply when they spoke over it (Twilio's `utteranceUntilInterrupt`). */
export const HEARD = 'We are open';

/** One sample, and where a relay call can produce it (the machine's own `can` must agree too). */
export interface RelaySample {
  event: ModelEvent;
  when?: (state: ModelSnapshot) => boolean;
}

function context(state: ModelSnapshot): CallContext {
  return state.context as CallContext;
}
/** The agent has not answered this turn yet: the only time the relay session sends SLOW. */
function awaitingAgent(state: ModelSnapshot): boolean {
  return state.matches('thinking');
}
/** A phrase is being "voiced": on the relay it is done at once, so nothing else can happen in between. */
function speakingPhrase(state: ModelSnapshot): boolean {
  return state.matches('speaking') && context(state).prompt.kind === 'phrase';
}
/** The caller is hearing (or has just heard) this turn's streamed reply. */
function replyHeard(state: ModelSnapshot): boolean {
  return context(state).prompt.kind === 'reply';
}

/**
 * Samples of every event a relay call may take, cheap outcomes first. QA adds a
 * sample here to make the generated paths try it; each type needs a way to
 * produce it in relay-driver.ts.
 */
export const RELAY_SAMPLES: RelaySample[] = [
  { event: { type: 'SPEECH', text: CALLER_QUESTION, at: 0 } },
  { event: { type: 'SPEECH', text: CALLER_GOODBYE, at: 0 } },
  { event: { type: 'SILENCE', at: 0 } },
  { event: { type: 'xstate.done.actor.agent', output: { text: AGENT_FIRST_WORDS, firstChunkAt: 0, at: 0 } } },
  { event: { type: 'xstate.error.actor.agent', error: 'agent answered 500' } },
  // A phrase: the phone speaks it, nothing to wait for.
  { event: { type: 'xstate.done.actor.voice', output: { at: 0 } }, when: (s) => !replyHeard(s) },
  // The whole reply streamed, as the agent wrote it.
  {
    event: { type: 'xstate.done.actor.voice', output: { at: 0, firstAt: 0, agentCompleteAt: 0, pieces: [{ text: AGENT_REPLY }], more: false } },
    when: replyHeard,
  },
  { event: { type: 'INTERRUPT', heard: HEARD, at: 0 }, when: replyHeard },
  { event: { type: 'DIGITS', digits: '5', at: 0 } },
  { event: { type: 'HANGUP', at: 0, status: 'completed' }, when: (s) => !speakingPhrase(s) },
  { event: { type: 'RECONNECTED', at: 0 }, when: (s) => !speakingPhrase(s) },
  { event: { type: 'SLOW', at: 1 }, when: awaitingAgent },
  { event: { type: 'SLOW', at: LATE }, when: awaitingAgent },
];

/** What the relay does at once with a phrase: the phone speaks it. */
const PHRASE_SPOKEN: ModelEvent = { type: 'xstate.done.actor.voice', output: { at: 0 } };

/**
 * The shortest path to every vertex of the relay model, samples offered in
 * RELAY_SAMPLES order. A path that would stop while a phrase is being voiced goes
 * on to where the phone speaking it leads: a relay call never rests there, so
 * nothing could be observed in between.
 */
export function relayPaths() {
  const paths = createCallModel(RELAY_INPUT).getShortestPaths({
    events: (state: ModelSnapshot) =>
      RELAY_SAMPLES.filter(({ event, when }) => state.status === 'active' && state.can(event as never) && (when?.(state) ?? true)).map(({ event }) => event),
  } as never);
  for (const path of paths) {
    const steps = path.steps as Array<{ state: ModelSnapshot; event: ModelEvent }>;
    while (speakingPhrase(steps.at(-1)!.state)) {
      const state = transition(modelMachine, steps.at(-1)!.state, PHRASE_SPOKEN as never)[0] as ModelSnapshot;
      steps.push({ state, event: PHRASE_SPOKEN });
    }
  }
  return paths;
}

/** The concrete snapshots along a relay path's events (see call-model.ts's `replay`). */
export function replayRelay(events: ModelEvent[]): ModelSnapshot[] {
  return replay(events, RELAY_INPUT);
}
