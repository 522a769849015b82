/**
 * A reply voiced while the agent is still writing it: the caller hears the first
 * sentence as soon as it is voiced, Twilio comes back (`/continue`) for the rest,
 * and the last pieces play inside the `<Gather>`. Real service on loopback, fake
 * agent streaming slowly, fake ElevenLabs.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PHRASES } from '../machines/call.machine.ts';
import { parseTwiml } from '../src/phone/twilio-caller.ts';
import type { ServiceOverrides } from '../src/service.ts';
import { SqliteCallStore } from '../src/store/sqlite-store.ts';
import { FaultyCallStore } from './hardening/support.ts';
import { useFakeBackends } from './support/fake-backends.ts';
import { ELEVENLABS_KEY, PUBLIC_BASE_URL, spoken, startService, type RunningService } from './support/service.ts';

const ANSWER = 'We open at nine. On Saturdays we open at ten, and we close at four. Anything else?';
const SENTENCES = ['We open at nine.', 'On Saturdays we open at ten, and we close at four.', 'Anything else?'];
/** One word every 40 ms: the whole answer takes about 600 ms, its first sentence 160 ms. */
const SLOW = { kind: 'reply', answer: () => ANSWER, chunkWords: 1, chunkDelayMs: 40 } as const;
/** The first sentence takes about this long to say: the agent has finished by the time it has played. */
const FIRST_SENTENCE_MS = 800;

const fakes = useFakeBackends({ agent: SLOW });
const running = fakes.running;

async function serviceWith(env: Record<string, string> = {}, options: { voice?: boolean; dataDir?: string } & ServiceOverrides = {}) {
  const { voice = true, ...overrides } = options;
  const r = await startService(
    {
      KOOZIE_AGENT_URI: fakes.agent.url,
      ...(voice ? { ELEVENLABS_API_KEY: ELEVENLABS_KEY, ELEVEN_VOICE_ID: 'voice-1', ELEVENLABS_BASE_URL: fakes.eleven.url } : {}),
      ...env,
    },
    overrides,
  );
  running.push(r);
  return r;
}

/** The verbs of a TwiML document, nested ones inside `Gather(...)`. */
function verbs(twiml: string): string[] {
  return parseTwiml(twiml).flatMap((node) => {
    const [name] = Object.keys(node).filter((k) => k !== ':@');
    if (name === 'Gather') return [`Gather(${verbs(`<Response>${toXml(node.Gather)}</Response>`).join(',')})`];
    return name && name !== '#text' ? [name] : [];
  });
}

/** Path and query of a document's `<Redirect>`, if it has one. */
function redirectOf(twiml: string): string | undefined {
  const match = /<Redirect[^>]*>([^<]+)<\/Redirect>/.exec(twiml);
  if (!match) return undefined;
  const url = new URL(match[1]!.replaceAll('&amp;', '&'));
  return url.pathname + url.search;
}

/** Path and query of every reply audio `<Play>` of a document. */
function replyAudioOf(twiml: string): string[] {
  return [...twiml.matchAll(/<Play>([^<]+\/audio\/call\/[^<]+)<\/Play>/g)].map((m) => {
    const url = new URL(m[1]!.replaceAll('&amp;', '&'));
    return url.pathname + url.search;
  });
}

function toXml(nodes: unknown): string {
  return (nodes as Array<Record<string, unknown>>)
    .map((node) => {
      const [name] = Object.keys(node).filter((k) => k !== ':@');
      return name === '#text' ? '' : `<${name}/>`;
    })
    .join('');
}

describe('a reply voiced while the agent writes it', () => {
  it('plays the first sentence before the agent has finished, then the rest inside the Gather', async () => {
    const svc = await serviceWith();
    const call = svc.call({ playbackMs: (h) => (h.verb === 'Play' && new URL(h.url).pathname.endsWith('/t0') ? FIRST_SENTENCE_MS : 0) });
    await call.dial();
    const sentBefore = fakes.agent.sentChunks.length;

    const turn = await call.say('When do you open?');

    // First document: the first sentence and a way back for more; the rest comes with the Gather.
    expect(verbs(turn.documents[0]!)).toEqual(['Play', 'Redirect']);
    expect(verbs(turn.documents.at(-1)!)).toEqual(['Gather(Play,Play)']);
    expect(spoken(turn.heard)).toEqual(['[audio]', '[audio]', '[audio]']);
    // ElevenLabs got each sentence, in order, with the reply's sentences before it for continuity.
    const voiced = fakes.eleven.requests.filter((r) => r.body?.text !== PHRASES.greeting);
    expect(voiced.map((r) => r.body?.text)).toEqual(SENTENCES);
    expect(voiced.map((r) => r.body?.previous_text)).toEqual([undefined, SENTENCES[0], `${SENTENCES[0]} ${SENTENCES[1]}`]);
    // The first piece's synthesis started while the agent was still writing.
    expect(fakes.agent.sentChunks.length - sentBefore).toBe(ANSWER.split(' ').length);

    const record = await svc.service.store.getRecord(call.callSid);
    const [first] = record!.turns;
    expect(first).toMatchObject({ reply: ANSWER, pieces: SENTENCES, voicedBy: 'audio' });
    expect(first!.firstAudioMs).toBeLessThan(first!.agentCompleteMs!);
    expect(first!.totalMs).toBeGreaterThanOrEqual(first!.agentCompleteMs!);
    expect(record?.path.map((p) => p.state)).toEqual([
      'greeting', 'speaking', 'listening',
      'thinking', 'speaking', 'replying', 'speaking', 'listening',
    ]);

    // The next question carries the whole answer as history.
    fakes.agent.setBehaviour({ kind: 'reply' });
    await call.say('Thanks. And on Sundays?');
    expect(fakes.agent.requests.at(-1)?.history).toEqual([
      { role: 'user', content: 'When do you open?' },
      { role: 'assistant', content: ANSWER },
    ]);
  });

  it('serves every piece from a signed URL as a complete file, and again from memory', async () => {
    const svc = await serviceWith();
    const call = svc.call();
    await call.dial();
    await call.say('When do you open?');
    // The first piece keeps the key a reply always had (`t0`); the others are `t0p1`, `t0p2`.
    const pieces = call.heard.filter((h) => h.verb === 'Play' && /\/t0(p\d)?$/.test(new URL(h.url).pathname));
    expect(pieces).toHaveLength(3);
    const before = fakes.eleven.requests.length;
    for (const piece of pieces) {
      if (piece.verb !== 'Play') continue;
      const url = new URL(piece.url);
      const again = await fetch(`${svc.address}${url.pathname}${url.search}`);
      expect(again.status).toBe(200);
      expect(Buffer.from(await again.arrayBuffer()).length).toBe(piece.bytes);
    }
    expect(fakes.eleven.requests.length).toBe(before);
  });

  it('reads a piece in the phone voice when ElevenLabs fails on it, and plays the others', async () => {
    const svc = await serviceWith();
    const call = svc.call();
    await call.dial();
    fakes.eleven.setBehaviour({ kind: 'sequence', steps: [{ kind: 'audio' }, { kind: 'status', status: 400, detail: 'bad_text' }, { kind: 'audio' }] });
    const turn = await call.say('When do you open?');
    expect(spoken(turn.heard)).toEqual(['[audio]', SENTENCES[1], '[audio]']);
    const record = await svc.service.store.getRecord(call.callSid);
    expect(record?.turns[0]).toMatchObject({ reply: ANSWER, voicedBy: 'say' });
    expect(record?.lastError).toMatch(/^speech: .*400/);
  });

  it('without a voice, the phone reads the first sentence while the agent writes on', async () => {
    const svc = await serviceWith({}, { voice: false });
    const call = svc.call();
    await call.dial();
    const turn = await call.say('When do you open?');
    expect(verbs(turn.documents[0]!)).toEqual(['Say', 'Redirect']);
    expect(spoken(turn.heard).join(' ')).toBe(ANSWER);
  });

  it('keeps what the agent said when it stops mid-answer, and the call goes on', async () => {
    const svc = await serviceWith({ AGENT_TIMEOUT_MS: '1000' });
    fakes.agent.setBehaviour({ kind: 'events', data: [JSON.stringify({ text: 'We open at nine. ' }), JSON.stringify({ text: 'On Satur' })], keepOpen: true });
    const call = svc.call();
    await call.dial();
    const turn = await call.say('When do you open?');
    expect(spoken(turn.heard)).toEqual(['[audio]', '[audio]']);
    const record = await svc.service.store.getRecord(call.callSid);
    expect(record?.turns[0]).toMatchObject({ reply: 'We open at nine. On Satur', pieces: ['We open at nine.', 'On Satur'] });
    expect(record?.turns[0]?.failure).toBeUndefined();
    // A timeout, said as one, and the turn says where the answer was cut.
    expect(record?.turns[0]?.cut).toMatch(/^agent: .*within 1000 ms; the answer was cut there$/);
    expect(record?.lastError).toBe(record?.turns[0]?.cut);
    fakes.agent.setBehaviour({ kind: 'reply' });
    expect(spoken((await call.say('OK')).heard)).toEqual(['[audio]']);
  });

  it('after a hold, the first sentence is played, not skipped, and the rest follows when Twilio asks for it', async () => {
    const svc = await serviceWith({ WEBHOOK_DEADLINE_MS: '200' });
    fakes.agent.setBehaviour({ ...SLOW, firstChunkDelayMs: 500 });
    // "One moment." lasts long enough for the first sentence to be voiced and stored meanwhile.
    const call = svc.call({ playbackMs: (h) => (h.verb === 'Say' ? 1_000 : 0) });
    await call.dial();
    const turn = await call.say('When do you open?');
    // The hold's redirect picks the reply up where it is; only the reply's own redirect asks for the rest.
    expect(turn.documents.map(verbs).slice(0, 2)).toEqual([['Say', 'Redirect'], ['Play', 'Redirect']]);
    expect(turn.documents[0]).toContain('/continue</Redirect>');
    expect(turn.documents[1]).toContain('/continue?played=1</Redirect>');
    expect(spoken(turn.heard)).toEqual([PHRASES.hold, '[audio]', '[audio]', '[audio]']);
    const record = await svc.service.store.getRecord(call.callSid);
    expect(record?.turns[0]).toMatchObject({ reply: ANSWER, pieces: SENTENCES });
  });

  it('when the store fails on the way to the rest, the retry still asks for the rest: the first sentence is not heard twice', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'heyai-stream-'));
    const store = new FaultyCallStore(new SqliteCallStore(dataDir));
    const svc = await startService(
      { KOOZIE_AGENT_URI: fakes.agent.url, ELEVENLABS_API_KEY: ELEVENLABS_KEY, ELEVEN_VOICE_ID: 'voice-1', ELEVENLABS_BASE_URL: fakes.eleven.url },
      { store, dataDir },
    );
    running.push(svc);
    const call = svc.call();
    await call.dial();
    const first = await call.webhook('/speech-result', { SpeechResult: 'When do you open?', Confidence: '0.9' });
    expect(verbs(first.body)).toEqual(['Play', 'Redirect']);

    store.failNext('load', 1);
    const recovery = await call.webhook(redirectOf(first.body)!);
    expect(recovery.status).toBe(200);
    expect(redirectOf(recovery.body)).toBe('/continue?attempt=1&played=1');
    const rest: string[] = [];
    for (let next = redirectOf(recovery.body); next && rest.length < 20; ) {
      rest.push((await call.webhook(next)).body);
      next = redirectOf(rest.at(-1)!);
    }
    expect(verbs(rest.at(-1)!)[0]).toMatch(/^Gather\(Play/);
    expect(rest.flatMap(replyAudioOf).map((url) => url.split('?')[0]!.split('/').at(-1))).toEqual(['t0p1', 't0p2']);
    const record = await store.getRecord(call.callSid);
    expect(record?.turns[0]).toMatchObject({ reply: ANSWER, pieces: SENTENCES });
  });

  it('with replyPieces: whole (the benchmark\'s baseline), voices the answer once it is complete, in one piece', async () => {
    const svc = await serviceWith({}, { replyPieces: 'whole' });
    const call = svc.call();
    await call.dial();
    const turn = await call.say('When do you open?');
    expect(turn.documents.map(verbs)).toEqual([['Gather(Play)']]);
    expect(fakes.eleven.requests.at(-1)?.body?.text).toBe(ANSWER);
    const record = await svc.service.store.getRecord(call.callSid);
    expect(record?.path.map((p) => p.state).slice(3)).toEqual(['thinking', 'speaking', 'listening']);
  });

  it('finalises the call when the caller hangs up while the reply is still being voiced', async () => {
    const svc = await serviceWith();
    const call = svc.call();
    await call.dial();
    const first = await call.webhook('/speech-result', { SpeechResult: 'When do you open?', Confidence: '0.9' });
    expect(verbs(first.body)).toEqual(['Play', 'Redirect']);
    expect(await call.hangUp('completed')).toBe(200);
    const record = await svc.service.store.getRecord(call.callSid);
    expect(record).toMatchObject({ state: 'ended', endReason: 'hangup', status: 'completed' });
    expect(record?.turns[0]?.pieces).toEqual([SENTENCES[0]]);
  });

  it('continues the reply on another instance: the rest is voiced there from the stored answer, the agent is asked once', async () => {
    const a = await serviceWith();
    const b = await serviceWith({}, { dataDir: a.dataDir });
    const call = a.call();
    await call.dial();
    const first = await call.webhook('/speech-result', { SpeechResult: 'When do you open?', Confidence: '0.9' });
    expect(verbs(first.body)).toEqual(['Play', 'Redirect']);

    // Twilio comes back for more as soon as the first sentence has played; the webhooks land on B,
    // which waits for A to store the whole answer (a hold if it takes longer than the deadline).
    const heard: string[] = [];
    const answeredByB: string[] = [];
    let next = redirectOf(first.body);
    for (let hops = 0; next && hops < 20; hops++) {
      const body = (await b.call({ callSid: call.callSid }).webhook(next)).body;
      answeredByB.push(body);
      heard.push(...verbs(body));
      next = redirectOf(body);
    }
    expect(heard.at(-1)).toBe('Gather(Play,Play)');
    expect(fakes.agent.requests.map((r) => r.message)).toEqual(['When do you open?']);
    const record = await b.service.store.getRecord(call.callSid);
    expect(record?.turns[0]).toMatchObject({ reply: ANSWER, pieces: SENTENCES, voicedBy: 'audio' });
    expect(record?.turns[0]?.written).toBeUndefined();
    expect(record?.path.map((p) => p.state).slice(3)).toEqual(['thinking', 'speaking', 'replying', 'speaking', 'listening']);
    // B voiced the rest itself: its pieces are served by B from memory.
    const before = fakes.eleven.requests.length;
    const rest = answeredByB.flatMap(replyAudioOf);
    expect(rest).toHaveLength(2);
    for (const url of rest) expect((await fetch(`${b.address}${url}`)).status).toBe(200);
    expect(fakes.eleven.requests.length).toBe(before);
  });

  it('when the instance streaming the reply is gone, another asks the agent again once its lease lapses and goes on where the caller was', async () => {
    const a = await serviceWith();
    const b = await serviceWith({ WEBHOOK_DEADLINE_MS: '1500' }, { dataDir: a.dataDir });
    const call = a.call();
    await call.dial();
    const first = await call.webhook('/speech-result', { SpeechResult: 'When do you open?', Confidence: '0.9' });
    expect(verbs(first.body)).toEqual(['Play', 'Redirect']);
    await a.close();
    running.splice(running.indexOf(a), 1);

    const documents: string[] = [];
    let next = redirectOf(first.body);
    for (let hops = 0; next && hops < 20; hops++) {
      const body = (await b.call({ callSid: call.callSid }).webhook(next)).body;
      documents.push(body);
      next = redirectOf(body);
    }
    // Held (silently: the caller is hearing the answer) until A's lease lapsed, then the rest, as the agent writes it again.
    expect(documents.slice(0, -1).map(verbs)).toContainEqual(['Pause', 'Redirect']);
    expect(verbs(documents.at(-1)!)[0]).toMatch(/^Gather\(Play/);
    expect(documents.flatMap(replyAudioOf).map((url) => new URL(url, PUBLIC_BASE_URL).pathname.split('/').at(-1))).toEqual(['t0p1', 't0p2']);
    expect(fakes.agent.requests.map((r) => r.message)).toEqual(['When do you open?', 'When do you open?']);
    const record = await b.service.store.getRecord(call.callSid);
    expect(record?.turns[0]).toMatchObject({ reply: ANSWER, pieces: SENTENCES });
    expect(record?.turns[0]?.cut).toBeUndefined();
  });
});
