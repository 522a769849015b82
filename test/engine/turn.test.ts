/**
 * The turn's actors (`askAgent`, `voicePrompt`, `collectReply`) on their own, with
 * no service and no machine: each is run as XState runs an invoked actor, against
 * the loopback fake agent (SSE) and fake ElevenLabs. What the fake agent had sent
 * when, and whether the client hung up on it, is read from the fake itself.
 */
import { describe, expect, it, vi } from 'vitest';
import { createActor, toPromise, type AnyActorLogic, type InputFrom, type OutputFrom } from 'xstate';
import type { AgentTurnInput, ReplyDelivery, ReplyProgress } from '../../machines/call.machine.ts';
import { createAgentClient } from '../../src/agent/agent-client.ts';
import { replyAudioId, replyAudioPath } from '../../src/engine/audio-address.ts';
import { Turns, type TextSink } from '../../src/engine/turn.ts';
import { HttpClient } from '../../src/http-client/http-exchange.ts';
import { createLogger } from '../../src/logger.ts';
import { createElevenLabsSpeech } from '../../src/speech/elevenlabs.ts';
import { VoiceLibrary } from '../../src/speech/voice-library.ts';
import { fakeAudioFor } from '../fakes/elevenlabs-server.ts';
import { useFakeBackends } from '../support/fake-backends.ts';
import { ELEVENLABS_KEY } from '../support/service.ts';

const fakes = useFakeBackends();
const log = createLogger('silent');
const OUTPUT_FORMAT = 'mp3_44100_128';

let calls = 0;
/** A call of its own for each test: replies in flight are kept by call and turn. */
const newCallSid = () => `CA${String(++calls).padStart(32, '0')}`;

interface Setup {
  turns: Turns;
  voice: VoiceLibrary;
  /** What each call's text sink was given, in order. */
  sent: Map<string, Array<{ token: string; last: boolean }>>;
}

function setUp(): Setup {
  const http = new HttpClient();
  const voice = new VoiceLibrary({
    speech: createElevenLabsSpeech({ apiKey: ELEVENLABS_KEY, voiceId: 'voice-1', baseUrl: fakes.eleven.url, outputFormat: OUTPUT_FORMAT, http }),
    voiceKey: 'voice-1',
  });
  const sent = new Map<string, Array<{ token: string; last: boolean }>>();
  const sink = (callSid: string): TextSink => ({
    text(token, last) {
      if (!sent.has(callSid)) sent.set(callSid, []);
      sent.get(callSid)!.push({ token, last });
    },
  });
  const turns = new Turns({
    agent: createAgentClient({ baseUrl: fakes.agent.url, log, http }),
    voice,
    log,
    now: Date.now,
    agentTimeoutMs: 8_000,
    replyPieces: 'sentences',
    textSink: sink,
  });
  return { turns, voice, sent };
}

function request(callSid: string, delivery: ReplyDelivery): AgentTurnInput {
  return { callSid, turn: 0, message: 'What time do you open?', delivery, history: [] };
}

function progress(input: AgentTurnInput, heard: string[] = [], written?: string[]): ReplyProgress {
  return { callSid: input.callSid, turn: input.turn, heard, request: input, ...(written ? { written } : {}) };
}

/** Runs an actor the way the machine invokes it; resolves with its output. */
function run<T extends AnyActorLogic>(logic: T, input: InputFrom<T>): { done: Promise<OutputFrom<T>>; stop(): void } {
  const actor = createActor(logic, { input }).start();
  return { done: toPromise(actor) as Promise<OutputFrom<T>>, stop: () => actor.stop() };
}

const sse = (text: string) => `data: ${JSON.stringify({ text })}\n\n`;

describe('askAgent', () => {
  it('returns the first piece to voice while the agent is still writing', async () => {
    const { turns } = setUp();
    fakes.agent.setBehaviour({ kind: 'sse', writes: [sse('We open at nine. '), sse('On Sundays')], keepOpen: true });
    const input = request(newCallSid(), 'pieces');
    const output = await run(turns.actors().askAgent, input).done;
    expect(output.text).toBe('We open at nine.');
    expect(output.firstChunkAt).toBeLessThanOrEqual(output.at);
    // The answer is still streaming: nobody hung up on the agent.
    expect(fakes.agent.hungUp()).toBe(0);
    expect(fakes.agent.requests).toMatchObject([{ message: input.message, callSid: input.callSid }]);
  });

  it('returns at the first chunk when the reply is streamed, before any sentence is complete', async () => {
    const { turns } = setUp();
    fakes.agent.setBehaviour({ kind: 'sse', writes: [sse('Sure')], keepOpen: true });
    const output = await run(turns.actors().askAgent, request(newCallSid(), 'streamed')).done;
    expect(output.text).toBe('Sure');
    expect(fakes.agent.hungUp()).toBe(0);
  });

  it('fails the turn when the agent answers with no text', async () => {
    const { turns } = setUp();
    fakes.agent.setBehaviour({ kind: 'status', status: 503 });
    await expect(run(turns.actors().askAgent, request(newCallSid(), 'pieces')).done).rejects.toThrow(/503/);
    expect(turns.inFlight).toBe(0);
  });
});

describe('voicePrompt, streamed', () => {
  it("forwards every chunk to the call's text sink as the agent wrote it, in order, then ends the reply", async () => {
    const { turns, sent } = setUp();
    fakes.agent.setBehaviour({ kind: 'bursts', bursts: ['Sure', ', I can', ' help with', ' that. ', 'Anything else?'].map((text) => ({ text, delayMs: 0 })) });
    const input = request(newCallSid(), 'streamed');
    const before = fakes.agent.sentChunks.length;
    await run(turns.actors().askAgent, input).done;
    const voiced = await run(turns.actors().voicePrompt, { callSid: input.callSid, prompt: { kind: 'reply', key: 't0', text: 'Sure' }, delivery: 'streamed', reply: progress(input) }).done;
    const agentSent = fakes.agent.sentChunks.slice(before);
    expect(sent.get(input.callSid)).toStrictEqual([...agentSent.map((token) => ({ token, last: false })), { token: '', last: true }]);
    expect(agentSent).toStrictEqual(['Sure', ', I can', ' help with', ' that. ', 'Anything else?']);
    expect(voiced).toMatchObject({ pieces: [{ text: 'Sure, I can help with that. Anything else?' }], more: false });
    expect(voiced.firstAt).toBeLessThanOrEqual(voiced.at);
    expect(turns.inFlight).toBe(0);
  });

  it("closes the agent's connection when stopped (an interrupt), and never ends the reply it did not finish", async () => {
    const { turns, sent } = setUp();
    fakes.agent.setBehaviour({ kind: 'sse', writes: [sse('Life is a complex set of ')], keepOpen: true });
    const input = request(newCallSid(), 'streamed');
    await run(turns.actors().askAgent, input).done;
    const voicing = run(turns.actors().voicePrompt, { callSid: input.callSid, prompt: { kind: 'reply', key: 't0', text: '' }, delivery: 'streamed', reply: progress(input) });
    await vi.waitFor(() => expect(sent.get(input.callSid)).toStrictEqual([{ token: 'Life is a complex set of ', last: false }]));
    expect(fakes.agent.hungUp()).toBe(0);
    voicing.stop();
    await vi.waitFor(() => expect(fakes.agent.hungUp()).toBe(1));
    expect(sent.get(input.callSid)).toStrictEqual([{ token: 'Life is a complex set of ', last: false }]);
    expect(turns.inFlight).toBe(0);
  });

  it('says nothing of its own for a phrase: the transport renders it', async () => {
    const { turns, sent } = setUp();
    const callSid = newCallSid();
    const voiced = await run(turns.actors().voicePrompt, { callSid, prompt: { kind: 'phrase', key: 'greeting', text: 'Hello!' }, delivery: 'streamed' }).done;
    expect(voiced).not.toHaveProperty('audio');
    expect(sent.has(callSid)).toBe(false);
    expect(fakes.eleven.requests).toStrictEqual([]);
  });
});

describe('voicePrompt, in pieces', () => {
  it('hands over the first voiced piece while the agent is still writing, with more to follow', async () => {
    const { turns, voice } = setUp();
    fakes.agent.setBehaviour({ kind: 'sse', writes: [sse('We open at nine. '), sse('On Sundays')], keepOpen: true });
    const input = request(newCallSid(), 'pieces');
    const first = await run(turns.actors().askAgent, input).done;
    const voiced = await run(turns.actors().voicePrompt, { callSid: input.callSid, prompt: { kind: 'reply', key: 't0', text: first.text }, delivery: 'pieces', reply: progress(input) }).done;
    expect(voiced).toMatchObject({ pieces: [{ text: 'We open at nine.', audio: replyAudioPath(input.callSid, 't0') }], more: true });
    expect(fakes.eleven.requests.map((r) => r.body?.text)).toStrictEqual(['We open at nine.']);
    // What the audio route will serve for that path is ElevenLabs' audio for that text.
    expect(voice.replyIfReady(replyAudioId(input.callSid, 't0'))?.bytes).toStrictEqual(fakeAudioFor('We open at nine.', OUTPUT_FORMAT));
  });

  it('hands over every piece after the ones heard, once the agent has written them all, each voiced with the pieces before it', async () => {
    const { turns, voice } = setUp();
    // Each burst a read of its own, so the answer comes in three pieces.
    fakes.agent.setBehaviour({
      kind: 'bursts',
      bursts: [
        { text: 'We open at nine. ', delayMs: 0 },
        { text: 'On Sundays we open at ten. ', delayMs: 30 },
        { text: 'See you soon!', delayMs: 30 },
      ],
    });
    const input = request(newCallSid(), 'pieces');
    const first = await run(turns.actors().askAgent, input).done;
    const written = await run(turns.actors().collectReply, progress(input, [first.text])).done;
    expect(written.pieces).toStrictEqual(['We open at nine.', 'On Sundays we open at ten.', 'See you soon!']);
    const rest = await run(turns.actors().voicePrompt, { callSid: input.callSid, prompt: { kind: 'reply', key: 't0', text: '' }, delivery: 'pieces', reply: progress(input, [first.text], written.pieces) }).done;
    expect(rest).toMatchObject({
      pieces: [
        { text: 'On Sundays we open at ten.', audio: replyAudioPath(input.callSid, 't0p1') },
        { text: 'See you soon!', audio: replyAudioPath(input.callSid, 't0p2') },
      ],
      more: false,
    });
    expect(rest.agentCompleteAt).toBe(written.completeAt);
    const synthesised = Object.fromEntries(fakes.eleven.requests.map((r) => [r.body?.text, r.body?.previous_text]));
    // previous_text is the reply's own earlier pieces, never the caller's words.
    expect(synthesised).toStrictEqual({ 'We open at nine.': undefined, 'On Sundays we open at ten.': 'We open at nine.', 'See you soon!': 'We open at nine. On Sundays we open at ten.' });
    expect(voice.replyIfReady(replyAudioId(input.callSid, 't0p2'))?.bytes).toStrictEqual(fakeAudioFor('See you soon!', OUTPUT_FORMAT));
    expect(turns.inFlight).toBe(0);
  });

  it('voices the rest of an answer stored by another instance without asking the agent again', async () => {
    const { turns } = setUp();
    const input = request(newCallSid(), 'pieces');
    const written = ['We open at nine.', 'On Sundays we open at ten.'];
    const rest = await run(turns.actors().voicePrompt, { callSid: input.callSid, prompt: { kind: 'reply', key: 't0', text: '' }, delivery: 'pieces', reply: progress(input, written.slice(0, 1), written) }).done;
    expect(rest).toMatchObject({ pieces: [{ text: 'On Sundays we open at ten.', audio: replyAudioPath(input.callSid, 't0p1') }], more: false });
    expect(fakes.agent.requests).toStrictEqual([]);
    expect(fakes.eleven.requests.map((r) => r.body?.text)).toStrictEqual(['On Sundays we open at ten.']);
  });
});

describe('collectReply', () => {
  it("waits for the agent's whole answer and hands over every piece, the heard ones included", async () => {
    const { turns } = setUp();
    fakes.agent.setBehaviour({ kind: 'reply', answer: () => 'We open at nine. On Sundays we open at ten.' });
    const input = request(newCallSid(), 'pieces');
    const written = await run(turns.actors().collectReply, progress(input)).done;
    expect(written.pieces.join(' ')).toBe('We open at nine. On Sundays we open at ten.');
    expect(written).not.toHaveProperty('cut');
  });

  it('does not fail when the answer breaks off: it hands over what was written and why it stopped there', async () => {
    const { turns } = setUp();
    fakes.agent.setBehaviour({ kind: 'close-mid-stream' });
    const written = await run(turns.actors().collectReply, progress(request(newCallSid(), 'pieces'))).done;
    expect(written.pieces).toStrictEqual(['Agent heard:']);
    expect(written.cut).toMatch(/^agent: .*; the answer was cut there$/);
  });
});
