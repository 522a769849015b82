/**
 * The real service against a fake ElevenLabs that enforces a plan's concurrency
 * limit the way ElevenLabs does (429 `too_many_concurrent_requests` past it) and
 * records what each request carried: how many requests the service sends at once,
 * how it behaves when the plan is full, and what it tells ElevenLabs about the
 * words around each piece.
 *
 * @see elevenlabs/elevenlabs-docs fern/docs/pages/models.mdx ("Concurrency and priority")
 * @see elevenlabs/elevenlabs-docs fern/apis/api/openapi.json (previous_text, next_text)
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { PHRASES } from '../../machines/call.machine.ts';
import { startFakeAgent, type FakeAgent } from '../fakes/agent-server.ts';
import { startFakeElevenLabs, type FakeElevenLabs } from '../fakes/elevenlabs-server.ts';
import { ELEVENLABS_KEY, PUBLIC_BASE_URL, spoken, startService, type RunningService } from '../support/service.ts';

const QUESTION = 'When do you open?';
const ANSWER = 'We open at nine. On Saturdays we open at ten, and we close at four. Anything else?';
const SENTENCES = ['We open at nine.', 'On Saturdays we open at ten, and we close at four.', 'Anything else?'];

let agent: FakeAgent;
let eleven: FakeElevenLabs;
const running: RunningService[] = [];
/** Requests to the fake from "another instance on the same account", hanging until the test ends. */
const occupying: AbortController[] = [];

beforeAll(async () => {
  // One word every 40 ms, so the answer arrives as three pieces.
  agent = await startFakeAgent({ behaviour: { kind: 'reply', answer: () => ANSWER, chunkWords: 1, chunkDelayMs: 40 } });
});
afterAll(async () => {
  await agent.close();
});
// A fake ElevenLabs of each test's own: its limit, requests and peak are that test's.
beforeEach(async () => {
  eleven = await startFakeElevenLabs({ apiKey: ELEVENLABS_KEY });
});
afterEach(async () => {
  for (const request of occupying.splice(0)) request.abort();
  await Promise.all(running.splice(0).map((r) => r.close()));
  await eleven.close();
});

async function serviceWith(limit: number | undefined, env: Record<string, string> = {}, dataDir?: string) {
  eleven.setConcurrencyLimit(limit);
  const svc = await startService(
    { KOOZIE_AGENT_URI: agent.url, ELEVENLABS_API_KEY: ELEVENLABS_KEY, ELEVEN_VOICE_ID: 'voice-1', ELEVENLABS_BASE_URL: eleven.url, ...env },
    dataDir ? { dataDir } : {},
  );
  running.push(svc);
  return svc;
}

/** Takes `slots` of the plan from outside the service, as another instance would, until the test ends. */
async function occupyPlan(slots: number): Promise<void> {
  eleven.setBehaviour({ kind: 'hang' });
  const before = eleven.requests.length;
  for (let i = 0; i < slots; i++) {
    const request = new AbortController();
    occupying.push(request);
    fetch(`${eleven.url}/v1/text-to-speech/voice-1/stream`, {
      method: 'POST',
      headers: { 'xi-api-key': ELEVENLABS_KEY, 'content-type': 'application/json' },
      body: JSON.stringify({ text: `another instance's answer ${i}` }),
      signal: request.signal,
    }).catch(() => undefined);
  }
  while (eleven.requests.length < before + slots) await new Promise((resolve) => setImmediate(resolve));
  eleven.setBehaviour({ kind: 'audio' });
}

describe('ElevenLabs concurrency', () => {
  it.each([
    { plan: 'Starter (the default, 6 with Flash)', limit: 6, env: {} as Record<string, string> },
    { plan: 'Free (ELEVENLABS_MAX_CONCURRENCY=4)', limit: 4, env: { ELEVENLABS_MAX_CONCURRENCY: '4' } },
  ])('warms up the seven fixed phrases within the $plan plan limit: no request refused', async ({ limit, env }) => {
    const svc = await serviceWith(limit, env);
    eleven.setBehaviour({ kind: 'audio', firstByteDelayMs: 30 });
    await svc.service.warmUp();
    expect(eleven.takePeakConcurrent()).toBeLessThanOrEqual(limit);
    expect(eleven.requests.map((r) => r.status)).toEqual(Object.values(PHRASES).map(() => 200));
    expect(svc.logs.filter((l) => l.msg === 'some fixed phrases could not be synthesised yet; they will be tried again per call')).toEqual([]);
  });

  it('with the plan full elsewhere, a three-sentence answer reaches the caller in the phone’s voice without a hold, each sentence asked at most twice', async () => {
    const svc = await serviceWith(2, { ELEVENLABS_MAX_CONCURRENCY: '2' });
    const call = svc.call();
    await call.dial();
    await occupyPlan(2);
    const asked = eleven.requests.length;

    const turn = await call.say(QUESTION);

    // Every word of the answer, read by the phone, and no "One moment" or silent pause first.
    expect(spoken(turn.heard).join(' ')).toBe(ANSWER);
    expect(turn.heard.filter((h) => h.verb === 'Pause' || (h.verb === 'Say' && h.text === PHRASES.hold))).toEqual([]);
    // One request and one retry per sentence, both refused by the full plan: no storm of retries.
    const sent = eleven.requests.slice(asked);
    expect(sent.map((r) => r.body?.text)).toEqual(SENTENCES.flatMap((s) => [s, s]));
    expect(sent.map((r) => r.status)).toEqual(SENTENCES.flatMap(() => [429, 429]));
    const record = await svc.service.store.getRecord(call.callSid);
    expect(record?.turns[0]).toMatchObject({ reply: ANSWER, pieces: SENTENCES, voicedBy: 'say' });
  });
});

describe('previous_text and next_text', () => {
  it('carry only the reply’s own sentences, never the caller’s words, here and when another instance voices a piece again', async () => {
    const a = await serviceWith(undefined);
    const call = a.call();
    await call.dial();
    await call.say(QUESTION);
    const voiced = eleven.requests.filter((r) => SENTENCES.includes(r.body?.text ?? ''));
    expect(voiced.map((r) => r.body?.text)).toEqual(SENTENCES);
    // Piece 1 has nothing before it; piece 2 carries piece 1; piece 3 both.
    expect(voiced.map((r) => r.body?.previous_text)).toEqual([undefined, SENTENCES[0], `${SENTENCES[0]} ${SENTENCES[1]}`]);
    for (const [i, r] of voiced.entries()) expect([undefined, SENTENCES[i + 1]]).toContain(r.body?.next_text);

    // Another instance, asked for the pieces' audio it never made, voices them from the stored answer.
    const b = await serviceWith(undefined, {}, a.dataDir);
    const urls = call.heard.flatMap((h) => (h.verb === 'Play' && h.url.includes('/audio/call/') ? [new URL(h.url, PUBLIC_BASE_URL)] : []));
    expect(urls.map((u) => u.pathname.split('/').at(-1))).toEqual(['t0', 't0p1', 't0p2']);
    const before = eleven.requests.length;
    for (const u of urls) expect((await fetch(`${b.address}${u.pathname}${u.search}`)).status).toBe(200);
    const again = eleven.requests.slice(before).map((r) => r.body);
    expect(again).toEqual([
      { text: SENTENCES[0], model_id: 'eleven_flash_v2_5', next_text: SENTENCES[1] },
      { text: SENTENCES[1], model_id: 'eleven_flash_v2_5', previous_text: SENTENCES[0], next_text: SENTENCES[2] },
      { text: SENTENCES[2], model_id: 'eleven_flash_v2_5', previous_text: `${SENTENCES[0]} ${SENTENCES[1]}` },
    ]);

    for (const r of eleven.requests) expect(JSON.stringify(r.body)).not.toContain(QUESTION);
  });
});
