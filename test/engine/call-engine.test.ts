/**
 * The step-and-commit protocol, with no transport: engines on a real
 * SqliteCallStore in a temporary directory, their turns over the loopback fake
 * agent (and fake ElevenLabs where a voice is needed). Two engines on two
 * connections to one store file are two instances of the service; what each
 * logged is read back as JSON.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { PHRASES, type CallEvent, type ReplyDelivery } from '../../machines/call.machine.ts';
import { createAgentClient } from '../../src/agent/agent-client.ts';
import { CallEngine, type CallView, type EngineOptions } from '../../src/engine/call-engine.ts';
import { LEASE_MS } from '../../src/engine/lease.ts';
import { Turns } from '../../src/engine/turn.ts';
import { HttpClient } from '../../src/http-client/http-exchange.ts';
import { createLogger } from '../../src/logger.ts';
import { createElevenLabsSpeech } from '../../src/speech/elevenlabs.ts';
import { VoiceLibrary } from '../../src/speech/voice-library.ts';
import { SqliteCallStore } from '../../src/store/sqlite-store.ts';
import { renderCallTwiml } from '../../src/transports/gather/twiml.ts';
import { defaultAnswer } from '../fakes/agent-server.ts';
import { useFakeBackends } from '../support/fake-backends.ts';
import { ELEVENLABS_KEY } from '../support/service.ts';

const fakes = useFakeBackends();

let calls = 0;
const newCallSid = () => `CA${String(++calls).padStart(32, 'e')}`;
const render = (view: CallView) => renderCallTwiml(view, { baseUrl: 'https://voice.example.com', signAudio: (path) => path });
const sse = (text: string) => `data: ${JSON.stringify({ text })}\n\n`;

interface Instance {
  engine: CallEngine;
  store: SqliteCallStore;
  logs: Array<Record<string, unknown>>;
  settled: CallView[];
}

/** One store file for the file's tests (each call its own), opened twice: two instances of the service. */
let dataDir: string;
const stores: SqliteCallStore[] = [];
const engines: CallEngine[] = [];

beforeAll(() => {
  dataDir = mkdtempSync(join(tmpdir(), 'heyai-engine-'));
  stores.push(new SqliteCallStore(dataDir), new SqliteCallStore(dataDir));
});
afterEach(() => {
  for (const engine of engines.splice(0)) engine.stop();
});
afterAll(async () => {
  await Promise.all(stores.map((store) => store.close()));
  rmSync(dataDir, { recursive: true, force: true });
});

/** One instance of the service's engine: on the first store file connection, or the second (`instance: 1`). */
function instance(options: { instance?: 0 | 1; voiced?: boolean; webhookDeadlineMs?: number } = {}): Instance {
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) logs.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  const log = createLogger('debug', sink);
  const http = new HttpClient();
  const voice = options.voiced
    ? new VoiceLibrary({ speech: createElevenLabsSpeech({ apiKey: ELEVENLABS_KEY, voiceId: 'voice-1', baseUrl: fakes.eleven.url, http }), voiceKey: 'voice-1' })
    : undefined;
  const turns = new Turns({ agent: createAgentClient({ baseUrl: fakes.agent.url, log, http }), voice, log, now: Date.now, agentTimeoutMs: 8_000, replyPieces: 'sentences', textSink: () => undefined });
  const store = stores[options.instance ?? 0]!;
  const settled: CallView[] = [];
  const engineOptions: EngineOptions = {
    store,
    turns,
    log,
    webhookDeadlineMs: options.webhookDeadlineMs ?? 3_000,
    agentTimeoutMs: 8_000,
    onSettled: (_callSid, view) => settled.push(view),
  };
  const engine = new CallEngine(engineOptions);
  engines.push(engine);
  return { engine, store, logs, settled };
}

function callOf(callSid: string, replyDelivery?: ReplyDelivery) {
  return { callSid, from: '+14155551234', to: '+16175551212', ...(replyDelivery ? { replyDelivery } : {}) };
}

const speech = (text: string): CallEvent => ({ type: 'SPEECH', text, at: Date.now() });

async function answered(answer: Promise<Awaited<ReturnType<CallEngine['handle']>>>): Promise<CallView> {
  const result = await answer;
  if (result.kind !== 'answer') throw new Error(`expected an answer, got ${result.kind}`);
  return result.view;
}

describe('a new call', () => {
  it("is claimed at revision 1 under this instance's lease before its greeting is voiced", async () => {
    fakes.eleven.setBehaviour({ kind: 'hang' });
    const { engine, store } = instance({ voiced: true });
    const callSid = newCallSid();
    const view = await answered(engine.start(callOf(callSid), { until: 'claimed' }));
    expect(view.state).toBe('speaking');
    const stored = await store.load(callSid);
    expect(stored?.revision).toBe(1);
    expect(stored?.record).toMatchObject({ state: 'speaking', worker: { instance: engine.instanceId } });
    expect(stored!.record.worker!.until).toBeGreaterThan(Date.now());
    expect(stored!.record.worker!.until).toBeLessThanOrEqual(Date.now() + LEASE_MS);
  });

  it('answers listening once the greeting is ready, committed with no lease', async () => {
    const { engine, store } = instance();
    const callSid = newCallSid();
    const view = await answered(engine.start(callOf(callSid)));
    expect([view.state, view.context.prompt.text, view.context.floor]).toStrictEqual(['listening', PHRASES.greeting, 1]);
    const stored = await store.load(callSid);
    expect(stored?.revision).toBe(2);
    expect(stored?.record.state).toBe('listening');
    expect(stored?.record).not.toHaveProperty('worker');
  });

  it('is unknown to a step that does not start it', async () => {
    const { engine } = instance();
    expect(await engine.handle(newCallSid(), speech('hello'))).toStrictEqual({ kind: 'unknown' });
  });
});

describe('a retried request', () => {
  it('gets the answer stored under its key, without the agent being asked again', async () => {
    const { engine, store } = instance();
    const callSid = newCallSid();
    await engine.start(callOf(callSid));
    const first = await engine.handle(callSid, speech('What time do you open?'), { key: '/speech-result|token-1', render });
    expect(first).toMatchObject({ kind: 'answer', view: { state: 'listening' } });
    const body = (first as { body: string }).body;
    expect(body).toContain('What time do you open?');
    const revision = (await store.load(callSid))?.revision;
    expect(fakes.agent.requests).toHaveLength(1);

    const retry = await engine.handle(callSid, speech('What time do you open?'), { key: '/speech-result|token-1', render });
    expect(retry).toStrictEqual({ kind: 'replay', body });
    expect(fakes.agent.requests).toHaveLength(1);
    expect((await store.load(callSid))?.revision).toBe(revision);
  });
});

describe('an answer to an older prompt (a replayed <Gather> result)', () => {
  it('is not applied: the call stays where it is and the agent is not asked', async () => {
    const { engine, store, logs } = instance();
    const callSid = newCallSid();
    await engine.start(callOf(callSid));
    const revision = (await store.load(callSid))?.revision;
    const stale = await answered(engine.handle(callSid, speech('an old answer'), { floor: 0 }));
    expect([stale.state, stale.context.turns]).toStrictEqual(['listening', []]);
    expect(fakes.agent.requests).toStrictEqual([]);
    expect((await store.load(callSid))?.revision).toBe(revision);
    expect(logs.filter((line) => String(line.message).startsWith('ignored an answer to a prompt the call has moved past'))).toHaveLength(1);

    const current = await answered(engine.handle(callSid, speech('the real answer'), { floor: 1 }));
    expect(current.context.turns).toMatchObject([{ caller: 'the real answer' }]);
  });
});

describe('two instances on one store', () => {
  it('never both commit from one revision: one of two concurrent steps loses, reloads, and applies its event after the other', async () => {
    const a = instance();
    const b = instance({ instance: 1 });
    const callSid = newCallSid();
    await a.engine.start(callOf(callSid));
    // Let A's own commit of the greeting finish, so that both steps start from idle instances, together.
    await new Promise((resolve) => setImmediate(resolve));
    const silence = (): CallEvent => ({ type: 'SILENCE', at: Date.now() });
    const views = await Promise.all([answered(a.engine.handle(callSid, silence())), answered(b.engine.handle(callSid, silence()))]);

    const lost = [...a.logs, ...b.logs].filter((line) => line.message === 'commit lost to a concurrent request; reloading');
    expect(lost).toHaveLength(1);
    // Both silences were heard, one after the other: a re-prompt, then the goodbye.
    expect(views.map((view) => [view.state, view.context.prompt.text]).sort()).toStrictEqual([
      ['listening', PHRASES.reprompt],
      ['terminating', PHRASES.goodbyeSilence],
    ]);
    const record = (await a.store.load(callSid))?.record;
    expect(record?.state).toBe('terminating');
    expect(record?.path.filter((step) => step.event === 'SILENCE').map((step) => step.state)).toStrictEqual(['speaking', 'speaking']);
  });

  it("makes a step wait for the instance holding the lease, then answer the machine's SLOW view with its event pending", async () => {
    // The agent writes a first sentence and keeps the connection open: instance A
    // is replying and still collecting the rest, so it keeps the call's lease.
    fakes.agent.setBehaviour({ kind: 'sse', writes: [sse('We open at nine. '), sse('On Sundays')], keepOpen: true });
    const a = instance();
    const b = instance({ instance: 1, webhookDeadlineMs: 300 });
    const callSid = newCallSid();
    await a.engine.start(callOf(callSid));
    const replying = await answered(a.engine.handle(callSid, speech('What time do you open?')));
    expect(replying.state).toBe('replying');
    const before = await b.store.load(callSid);
    expect(before?.record.worker?.instance).toBe(a.engine.instanceId);

    const played: CallEvent = { type: 'PLAYED', at: Date.now() };
    const waited = await answered(b.engine.handle(callSid, played));
    // What the machine does with a slow PLAYED: the reply is already audible, so a pause, not the hold line.
    expect(waited).toMatchObject({ state: 'speaking', context: { filler: 'pause' }, pending: played });
    expect(render(waited)).toContain('/continue?played=1');
    // B changed nothing and asked no agent: A still owns the turn.
    const after = await b.store.load(callSid);
    expect(after?.record.state).toBe('replying');
    expect(after?.record.worker?.instance).toBe(a.engine.instanceId);
    expect(fakes.agent.requests).toHaveLength(1);
  });
});

describe('a step that returns once its work is claimed', () => {
  it('answers a working view at once, and the settled view arrives later through onSettled, committed', async () => {
    const { engine, store, settled } = instance();
    const callSid = newCallSid();
    await engine.start(callOf(callSid, 'streamed'));
    const claimed = await answered(engine.handle(callSid, speech('What time do you open?'), { until: 'claimed' }));
    expect(claimed.state).toBe('thinking');
    expect(settled).toStrictEqual([]);

    await vi.waitFor(() => expect(settled).toHaveLength(1));
    const reply = defaultAnswer({ message: 'What time do you open?', history: [] });
    expect(settled[0]).toMatchObject({ state: 'listening', context: { turns: [{ caller: 'What time do you open?', reply, voicedBy: 'text' }] } });
    const stored = await store.load(callSid);
    expect(stored?.record).toMatchObject({ state: 'listening', turns: [{ reply }] });
    expect(stored?.record).not.toHaveProperty('worker');
  });
});
