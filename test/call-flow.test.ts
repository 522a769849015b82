/**
 * Whole calls against the real service over loopback HTTP: a simulated Twilio
 * signs webhooks and walks the TwiML; the agent and ElevenLabs are fake HTTP
 * servers. Each test reads as what a caller (or Twilio) experiences.
 */
import { describe, expect, it } from 'vitest';
import { PHRASES } from '../machines/call.machine.ts';
import { parseTwiml } from '../src/phone/twilio-caller.ts';
import { useFakeBackends } from './support/fake-backends.ts';
import { ELEVENLABS_KEY, spoken, startService, type RunningService } from './support/service.ts';

const fakes = useFakeBackends();
const running = fakes.running;

async function serviceWith(env: Record<string, string> = {}, withVoice = true) {
  const r = await startService({
    KOOZIE_AGENT_URI: fakes.agent.url,
    ...(withVoice ? { ELEVENLABS_API_KEY: ELEVENLABS_KEY, ELEVEN_VOICE_ID: 'voice-1', ELEVENLABS_BASE_URL: fakes.eleven.url } : {}),
    ...env,
  });
  running.push(r);
  return r;
}

describe('a call with the agent and ElevenLabs voice', () => {
  it('greets, answers several turns in the synthesised voice, remembers the conversation and ends on goodbye', async () => {
    const svc = await serviceWith();
    const call = svc.call();

    const greeting = await call.dial();
    expect(spoken(greeting.heard)).toEqual(['[audio]']);
    expect(fakes.eleven.requests.map((r) => r.body?.text)).toContain(PHRASES.greeting);

    const first = await call.say('What are your opening hours?');
    expect(spoken(first.heard)).toEqual(['[audio]']);
    expect(fakes.eleven.requests.at(-1)?.body?.text).toBe('Agent heard: What are your opening hours? (history: 0)');
    expect(fakes.eleven.requests.at(-1)?.headers['xi-api-key']).toBe(ELEVENLABS_KEY);

    const second = await call.say('And on Sundays?');
    expect(spoken(second.heard)).toEqual(['[audio]']);
    // The agent got the first exchange as context on the second turn.
    expect(fakes.agent.requests[1]?.history).toEqual([
      { role: 'user', content: 'What are your opening hours?' },
      { role: 'assistant', content: 'Agent heard: What are your opening hours? (history: 0)' },
    ]);
    expect(fakes.agent.requests[1]?.callSid).toBe(call.callSid);

    const bye = await call.say('OK, goodbye!');
    expect(bye.ended).toBe(true);
    expect(bye.heard.at(-1)).toEqual({ verb: 'Hangup' });
    expect(fakes.agent.requests).toHaveLength(2);

    expect(await call.hangUp('completed')).toBe(200);
    const record = await svc.service.store.getRecord(call.callSid);
    expect(record).toMatchObject({ status: 'completed', endReason: 'goodbye', state: 'ended', from: '+15550100001' });
    expect(record?.turns.map((t) => [t.caller, t.reply, t.voicedBy])).toEqual([
      ['What are your opening hours?', 'Agent heard: What are your opening hours? (history: 0)', 'audio'],
      ['And on Sundays?', 'Agent heard: And on Sundays? (history: 2)', 'audio'],
    ]);
    for (const turn of record!.turns) {
      expect(turn.confidence).toBe(0.92);
      expect(turn.agentFirstChunkMs).toBeGreaterThanOrEqual(0);
      expect(turn.agentCompleteMs).toBeGreaterThanOrEqual(turn.agentFirstChunkMs!);
      expect(turn.totalMs).toBeGreaterThanOrEqual(turn.agentCompleteMs!);
    }
    expect(record?.path.map((p) => p.state)).toEqual([
      'greeting', 'speaking', 'listening',
      'thinking', 'speaking', 'listening',
      'thinking', 'speaking', 'listening',
      'speaking', 'terminating', 'ended',
    ]);
  });

  it('plays audio only from signed URLs, and each reply as a file Twilio can play', async () => {
    const svc = await serviceWith();
    const call = svc.call();
    await call.dial();
    await call.say('hello there');
    const play = call.heard.filter((h) => h.verb === 'Play');
    expect(play).toHaveLength(2);
    for (const p of play) {
      expect(p.verb === 'Play' && p.contentType).toBe('audio/wav');
      expect(p.verb === 'Play' && new URL(p.url).searchParams.get('sig')).toMatch(/^[\w-]{43}$/);
    }
  });
});

describe('what the caller hears when something goes wrong', () => {
  it('hears an apology when the agent answers 500, and the next question still works', async () => {
    const svc = await serviceWith({}, false);
    const call = svc.call();
    await call.dial();
    fakes.agent.setBehaviour({ kind: 'status', status: 500, body: 'boom' });
    const failed = await call.say('Hello?');
    expect(spoken(failed.heard)).toEqual([PHRASES.apology]);
    fakes.agent.setBehaviour({ kind: 'reply' });
    const ok = await call.say('Hello again');
    expect(spoken(ok.heard)).toEqual(['Agent heard: Hello again (history: 0)']);
    const record = await svc.service.store.getRecord(call.callSid);
    expect(record?.turns[0]?.failure).toMatch(/^agent: .*500/);
  });

  it('is kept on the line while the agent hangs, then hears an apology before Twilio would give up', async () => {
    const svc = await serviceWith({ WEBHOOK_DEADLINE_MS: '300', AGENT_TIMEOUT_MS: '1500' }, false);
    fakes.agent.setBehaviour({ kind: 'hang' });
    const call = svc.call();
    await call.dial();
    const turn = await call.say('Are you there?');
    const said = spoken(turn.heard);
    expect(said[0]).toBe(PHRASES.hold);
    expect(said.at(-1)).toBe(PHRASES.apology);
    // Every single webhook answered well inside Twilio's 15 s.
    expect(turn.documents.length).toBeGreaterThan(1);
    expect(turn.elapsedMs).toBeLessThan(5_000);
  });

  it('hears an apology for malformed SSE and for a stream closed before any text', async () => {
    const svc = await serviceWith({}, false);
    const call = svc.call();
    await call.dial();
    fakes.agent.setBehaviour({ kind: 'malformed' });
    expect(spoken((await call.say('one')).heard)).toEqual([PHRASES.apology]);
    fakes.agent.setBehaviour({ kind: 'events', data: [] });
    expect(spoken((await call.say('two')).heard)).toEqual([PHRASES.apology]);
  });

  it('ends politely after three failed turns in a row', async () => {
    const svc = await serviceWith({}, false);
    fakes.agent.setBehaviour({ kind: 'status', status: 503 });
    const call = svc.call();
    await call.dial();
    await call.say('one');
    await call.say('two');
    const last = await call.say('three');
    expect(spoken(last.heard)).toEqual([PHRASES.goodbyeFailures, '[Hangup]']);
    expect((await svc.service.store.getRecord(call.callSid))?.endReason).toBe('failures');
  });

  it.each([
    ['401 (bad key)', { kind: 'status', status: 401, detail: 'invalid_api_key' }],
    ['429 (busy)', { kind: 'status', status: 429, detail: 'too_many_concurrent_requests' }],
    ['500', { kind: 'status', status: 500 }],
  ] as const)('hears the same words in the phone voice when ElevenLabs answers %s', async (_name, behaviour) => {
    const svc = await serviceWith({ AGENT_TIMEOUT_MS: '5000' });
    const call = svc.call();
    await call.dial();
    fakes.eleven.setBehaviour(behaviour);
    const turn = await call.say('Tell me something');
    expect(spoken(turn.heard)).toEqual(['Agent heard: Tell me something (history: 0)']);
    const record = await svc.service.store.getRecord(call.callSid);
    expect(record?.turns[0]?.voicedBy).toBe('say');
    expect(record?.lastError).toMatch(/^speech: /);
  });

  it('hears agent text full of <, & and quotes exactly, in well-formed TwiML', async () => {
    const svc = await serviceWith({}, false);
    const nasty = `Use <b>"bold"</b> & 'quotes' ]]> <Hangup/> </Say><Say>x`;
    fakes.agent.setBehaviour({ kind: 'reply', answer: () => nasty, chunkWords: 1 });
    const call = svc.call();
    await call.dial();
    const turn = await call.say('format something');
    expect(spoken(turn.heard)).toEqual([nasty]);
    expect(() => parseTwiml(turn.documents[0]!)).not.toThrow();
    expect(turn.ended).toBe(false);
  });
});

describe('silence', () => {
  it('re-prompts once, then says goodbye and hangs up', async () => {
    const svc = await serviceWith({}, false);
    const call = svc.call();
    await call.dial();
    expect(spoken((await call.say(null)).heard)).toEqual([PHRASES.reprompt]);
    const second = await call.say(null);
    expect(spoken(second.heard)).toEqual([PHRASES.goodbyeSilence, '[Hangup]']);
    expect(fakes.agent.requests).toHaveLength(0);
    expect((await svc.service.store.getRecord(call.callSid))?.endReason).toBe('silence');
  });

  it('counts silences in a row only: speaking in between starts over', async () => {
    const svc = await serviceWith({}, false);
    const call = svc.call();
    await call.dial();
    await call.say(null);
    await call.say('hello');
    expect(spoken((await call.say(null)).heard)).toEqual([PHRASES.reprompt]);
  });
});

describe('Twilio requests', () => {
  it('refuses forged and missing signatures with 403 and stores nothing', async () => {
    const svc = await serviceWith({}, false);
    const forged = svc.call({ authToken: 'not-the-real-token' });
    await expect(forged.dial()).rejects.toThrow(/answered 403/);
    const missing = await fetch(`${svc.address}/voice`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: `CallSid=${forged.callSid}&From=%2B1&To=%2B2`,
    });
    expect(missing.status).toBe(403);
    expect(await svc.service.store.load(forged.callSid)).toBeNull();
    expect(fakes.agent.requests).toHaveLength(0);
  });

  it('refuses a signed request whose body was changed on the way', async () => {
    const svc = await serviceWith({}, false);
    const call = svc.call();
    await call.dial();
    const res = await fetch(`${svc.address}/speech-result`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-twilio-signature': 'AAAAAAAAAAAAAAAAAAAAAAAAAAA=' },
      body: `CallSid=${call.callSid}&SpeechResult=transfer+all+my+money`,
    });
    expect(res.status).toBe(403);
    expect(fakes.agent.requests).toHaveLength(0);
  });

  it('answers a webhook for an unknown call with TwiML that apologises and hangs up', async () => {
    const svc = await serviceWith({}, false);
    const stranger = svc.call();
    const answer = await stranger.webhook('/speech-result', { SpeechResult: 'hello' });
    expect(answer.status).toBe(200);
    const verbs = parseTwiml(answer.body).map((v) => Object.keys(v)[0]);
    expect(verbs).toEqual(['Say', 'Hangup']);
    expect(fakes.agent.requests).toHaveLength(0);
  });

  it('answers a malformed CallSid with 400, not 5xx', async () => {
    const svc = await serviceWith({}, false);
    const bad = svc.call({ callSid: 'not-a-call-sid' });
    const answer = await bad.webhook('/voice');
    expect(answer.status).toBe(400);
  });

  it('gives a retried webhook the same TwiML without asking the agent again', async () => {
    const svc = await serviceWith({}, false);
    const call = svc.call();
    await call.dial();
    const turn = await call.say('only once please');
    const again = await call.retryLast();
    expect(again).toBe(turn.documents.at(-1));
    expect(fakes.agent.requests).toHaveLength(1);
  });

  it('finalises the record when Twilio reports the caller hung up mid-call', async () => {
    const svc = await serviceWith({}, false);
    const call = svc.call();
    await call.dial();
    await call.say('hello');
    expect(await call.hangUp('completed')).toBe(200);
    const record = await svc.service.store.getRecord(call.callSid);
    expect(record).toMatchObject({ status: 'completed', endReason: 'hangup', state: 'ended' });
    expect(record?.endedAt).toBeGreaterThanOrEqual(record!.startedAt);
  });
});

describe('audio URLs', () => {
  it('refuses tampered, expired and unsigned audio URLs without calling ElevenLabs', async () => {
    const svc = await serviceWith({});
    const call = svc.call();
    await call.dial();
    await call.say('hello');
    const play = call.heard.find((h) => h.verb === 'Play' && h.url.includes('/audio/call/'));
    if (play?.verb !== 'Play') throw new Error('expected audio');
    const url = new URL(play.url);
    const before = fakes.eleven.requests.length;
    const local = (u: URL) => `${svc.address}${u.pathname}${u.search}`;

    const otherCall = new URL(url);
    otherCall.pathname = otherCall.pathname.replace(/CA[0-9a-f]{32}/, 'CA' + '0'.repeat(32));
    const laterExpiry = new URL(url);
    laterExpiry.searchParams.set('exp', String(Number(url.searchParams.get('exp')) + 3600));
    const unsigned = new URL(url);
    unsigned.search = '';
    const phrase = call.heard.find((h) => h.verb === 'Play' && h.url.includes('/audio/phrase/'));
    if (phrase?.verb !== 'Play') throw new Error('expected the greeting audio');
    const phraseUrl = new URL(phrase.url);
    const otherPhrase = new URL(phraseUrl);
    otherPhrase.pathname = '/audio/phrase/goodbye';
    for (const bad of [otherCall, laterExpiry, unsigned, otherPhrase]) {
      expect((await fetch(local(bad))).status).toBe(403);
    }
    expect((await fetch(`${svc.address}/audio?text=spend+my+credit`)).status).toBe(404);
    expect(fakes.eleven.requests.length).toBe(before);
    expect((await fetch(local(url))).status).toBe(200);
  });
});
