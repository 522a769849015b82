/**
 * The ConversationRelay transport's output on the socket: machine state → the
 * messages the service sends Twilio, golden, exactly as they go on the wire
 * (`text` with `token` and `last`, `end` with `handoffData`; Twilio's
 * "Getting and sending WebSocket messages",
 * https://www.twilio.com/docs/voice/conversationrelay/websocket-messages).
 * Each view is one the machine reaches on a streamed call, driven with its pure
 * transitions; `Said` is what the session has already said.
 */
import { describe, expect, it } from 'vitest';
import type { SnapshotFrom } from 'xstate';
import { callMachine, PHRASES, type CallEvent, type CallMachine } from '../../../machines/call.machine.ts';
import type { CallView } from '../../../src/engine/call-engine.ts';
import { PureSteps } from '../../../src/engine/pure-steps.ts';
import { parseServiceMessage, serialiseServiceMessage } from '../../../src/transports/relay/messages.ts';
import { relayOutputOf, type Said } from '../../../src/transports/relay/relay-output.ts';

const T0 = 1_767_225_600_000;
const pure = new PureSteps(callMachine);
type Snapshot = SnapshotFrom<CallMachine>;

/** A streamed call, driven by the machine's own transitions (actor results as the events their actors send). */
function call(...events: Array<CallEvent | { type: `xstate.done.actor.${string}`; output: unknown }>): Snapshot {
  let snapshot = pure.initial({ callSid: 'CA0123456789abcdef0123456789abcdef', from: '+14155551234', to: '+16175551212', at: T0, agentTimeoutMs: 8_000, replyDelivery: 'streamed' });
  for (const event of events) snapshot = pure.next(snapshot, event as CallEvent);
  return snapshot;
}
const view = (snapshot: Snapshot): CallView => ({ state: String(snapshot.value), context: snapshot.context });

const spoken = { type: 'xstate.done.actor.voice', output: { at: T0 + 100 } } as const;
const asked = (text: string, at: number) => ({ type: 'SPEECH', text, at }) as const;
const slow = (at: number) => ({ type: 'SLOW', at }) as const;
const answered = (at: number) => ({ type: 'xstate.done.actor.agent', output: { text: 'We', firstChunkAt: at, at } }) as const;
const streamedAll = (at: number) => ({ type: 'xstate.done.actor.voice', output: { at, pieces: [{ text: 'We open at nine.' }], more: false } }) as const;

/** What the session sends for a view, as wire JSON, and what it has said after. */
function wire(snapshot: Snapshot, said: Said): { sent: string[]; said: Said } {
  const output = relayOutputOf(view(snapshot), said);
  const sent = output.messages.map(serialiseServiceMessage);
  // Every message is one the service's own parser (and so Twilio's documented format) accepts back.
  for (const [i, json] of sent.entries()) expect(parseServiceMessage(json)).toStrictEqual(output.messages[i]);
  return { sent, said: output.said };
}

/** A session opened on the greeting: Twilio said it as the welcome greeting. */
const OPENED: Said = { floor: 1, holdAtTurns: -1, ended: false };

describe('what a ConversationRelay session says', () => {
  it('says a phrase the caller has not heard yet (a re-prompt) as one last text, once', () => {
    const reprompted = call(spoken, { type: 'SILENCE', at: T0 + 9_000 }, spoken);
    expect([reprompted.value, reprompted.context.floor]).toStrictEqual(['listening', 2]);
    const first = wire(reprompted, OPENED);
    expect(first.sent).toStrictEqual([`{"type":"text","token":${JSON.stringify(PHRASES.reprompt)},"last":true}`]);
    expect(first.said).toStrictEqual({ ...OPENED, floor: 2 });
    expect(wire(reprompted, first.said).sent).toStrictEqual([]);
  });

  it('says nothing for the phrase Twilio already said as the welcome greeting', () => {
    const greeted = call(spoken);
    expect([greeted.value, greeted.context.floor]).toStrictEqual(['listening', 1]);
    expect(wire(greeted, OPENED)).toStrictEqual({ sent: [], said: OPENED });
  });

  it("says nothing when it listens after a reply: the agent's words went out as they were written", () => {
    const replied = call(spoken, asked('When do you open?', T0 + 5_000), answered(T0 + 5_100), streamedAll(T0 + 5_500));
    expect([replied.value, replied.context.prompt.kind]).toStrictEqual(['listening', 'reply']);
    expect(wire(replied, OPENED).sent).toStrictEqual([]);
  });

  it('says the hold line on the first slow wait of a turn, once, and again on a later turn', () => {
    const waiting = call(spoken, asked('When do you open?', T0 + 5_000), slow(T0 + 8_000));
    expect([waiting.value, waiting.context.filler]).toStrictEqual(['thinking', 'hold']);
    const first = wire(waiting, OPENED);
    expect(first.sent).toStrictEqual(['{"type":"text","token":"One moment.","last":true}']);
    expect(first.said).toStrictEqual({ ...OPENED, holdAtTurns: 1 });
    // The same view rendered again (a settled view after a claimed one) says it no more.
    expect(wire(waiting, first.said).sent).toStrictEqual([]);

    const nextTurn = call(spoken, asked('When do you open?', T0 + 5_000), slow(T0 + 8_000), answered(T0 + 9_000), streamedAll(T0 + 9_500), asked('And Sundays?', T0 + 12_000), slow(T0 + 15_000));
    expect(nextTurn.context.filler).toBe('hold');
    expect(wire(nextTurn, first.said).sent).toStrictEqual(['{"type":"text","token":"One moment.","last":true}']);
  });

  it('says nothing for a pause (a later wait of the same turn)', () => {
    const paused = call(spoken, asked('When do you open?', T0 + 5_000), slow(T0 + 8_000), slow(T0 + 11_000));
    expect([paused.value, paused.context.filler]).toStrictEqual(['thinking', 'pause']);
    expect(wire(paused, OPENED).sent).toStrictEqual([]);
  });

  it('ends the session once when the call is ending, with why in handoffData (the action URL says the goodbye)', () => {
    const ending = call(spoken, asked('Goodbye', T0 + 5_000), spoken);
    expect(ending.value).toBe('terminating');
    const first = wire(ending, OPENED);
    expect(first.sent).toStrictEqual(['{"type":"end","handoffData":"{\\"reasonCode\\":\\"call-ending\\",\\"reason\\":\\"goodbye\\"}"}']);
    expect(first.said.ended).toBe(true);
    expect(wire(ending, first.said).sent).toStrictEqual([]);

    const silent = call(spoken, { type: 'SILENCE', at: T0 + 9_000 }, spoken, { type: 'SILENCE', at: T0 + 18_000 }, spoken);
    expect(silent.value).toBe('terminating');
    expect(JSON.parse(JSON.parse(wire(silent, OPENED).sent[0]!).handoffData)).toStrictEqual({ reasonCode: 'call-ending', reason: 'silence' });
  });

  it('says nothing once the call has ended (Twilio reported the hang-up)', () => {
    const ended = call(spoken, asked('When do you open?', T0 + 5_000), { type: 'HANGUP', status: 'completed', at: T0 + 6_000 });
    expect(ended.value).toBe('ended');
    expect(wire(ended, OPENED).sent).toStrictEqual([]);
  });
});
