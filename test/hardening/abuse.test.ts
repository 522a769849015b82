/**
 * Abuse: a phone line is public. Per-caller and per-instance rate limits, body
 * size limits, the admin console closed without its token, audio URLs that only
 * work signed and unexpired, and no secret in any log line after calls that fail
 * in every way.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PHRASES } from '../../machines/call.machine.ts';
import { startFakeAgent, type FakeAgent } from '../fakes/agent-server.ts';
import { startFakeElevenLabs, type FakeElevenLabs } from '../fakes/elevenlabs-server.ts';
import { AUTH_TOKEN, ELEVENLABS_KEY, spoken, startService, type RunningService } from '../support/service.ts';
import { callSidFor, figure, linesWithSecrets, signedForm, twilioSignature } from './support.ts';

const ADMIN_TOKEN = 'admin-token-0123456789-abcdef';

let agent: FakeAgent;
let eleven: FakeElevenLabs;
const running: RunningService[] = [];

beforeAll(async () => {
  agent = await startFakeAgent();
  eleven = await startFakeElevenLabs({ apiKey: ELEVENLABS_KEY });
});
afterEach(async () => {
  agent.setBehaviour({ kind: 'reply' });
  eleven.setBehaviour({ kind: 'audio' });
  await Promise.all(running.splice(0).map((r) => r.close()));
});
afterAll(async () => {
  await agent.close();
  await eleven.close();
});

async function serviceWith(env: Record<string, string> = {}, overrides: Parameters<typeof startService>[1] = {}) {
  const svc = await startService({ KOOZIE_AGENT_URI: agent.url, ...env }, overrides);
  running.push(svc);
  return svc;
}

function voiceEnv() {
  return { ELEVENLABS_API_KEY: ELEVENLABS_KEY, ELEVEN_VOICE_ID: 'voice-1', ELEVENLABS_BASE_URL: eleven.url };
}

describe('rate limits', () => {
  it('limits signed webhooks per caller number, leaves other callers alone, and never counts forged requests', async () => {
    const svc = await serviceWith({ RATE_LIMIT_PER_CALLER_PER_MINUTE: '5' });
    const victim = '+15550107777';
    // A stranger forges requests in the victim's name: refused, and not counted against them.
    for (let i = 0; i < 20; i++) {
      const forged = await fetch(`${svc.address}/voice`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-twilio-signature': 'forged' },
        body: new URLSearchParams({ CallSid: callSidFor(i + 1), From: victim, To: '+15550100002' }).toString(),
      });
      expect(forged.status).toBe(403);
    }
    const call = svc.call({ from: victim });
    await call.dial(); // 1
    await call.say('first question'); // 2
    await call.say('second question'); // 3
    await call.say('third question'); // 4
    await call.say('fourth question'); // 5
    const over = await call.webhook('/speech-result', { SpeechResult: 'fifth question' });
    expect(over.status).toBe(429);
    expect(over.body).toMatch(/^Too Many Requests: too many requests for this caller/);

    // Another number still gets through; so do withheld numbers, each call on its own.
    const other = svc.call({ from: '+15550108888' });
    expect(spoken((await other.dial()).heard)).toEqual([PHRASES.greeting]);
    for (let i = 0; i < 7; i++) {
      const anonymous = svc.call({ from: '+266696687' });
      expect((await anonymous.dial()).heard.length).toBeGreaterThan(0);
    }
    const record = await svc.service.store.getRecord(call.callSid);
    expect(record?.turns.map((t) => t.caller)).toEqual(['first question', 'second question', 'third question', 'fourth question']);
    expect(svc.logs.some((l) => l.message === 'rate limit reached: answering 429' && l.limit === 'caller')).toBe(true);
    figure('abuse: per-caller limit 5/min: 6th signed webhook answered 429; 20 forged requests in the caller\u2019s name not counted; other and withheld numbers unaffected');
  });

  it('limits requests per instance in a burst, keeps health checks answering, and recovers after the window', async () => {
    const svc = await serviceWith({ RATE_LIMIT_GLOBAL_PER_SECOND: '20' });
    const burst = await Promise.all(
      Array.from({ length: 80 }, (_, i) =>
        fetch(`${svc.address}${i % 2 ? '/voice' : '/audio/phrase/greeting'}`, {
          method: i % 2 ? 'POST' : 'GET',
          ...(i % 2 ? { headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `CallSid=${callSidFor(i)}` } : {}),
        }).then((r) => r.status),
      ),
    );
    const health = await Promise.all(Array.from({ length: 10 }, () => fetch(`${svc.address}/healthz`).then((r) => r.status)));
    const tooMany = burst.filter((s) => s === 429).length;
    expect(tooMany).toBeGreaterThanOrEqual(55);
    expect(burst.every((s) => s === 429 || s === 403)).toBe(true);
    expect(health).toEqual(Array(10).fill(200));
    expect((await fetch(`${svc.address}/readyz`)).status).toBe(200);

    const limited = await fetch(`${svc.address}/voice`, { method: 'POST' });
    expect(limited.status).toBe(429);
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    const call = svc.call();
    expect(spoken((await call.dial()).heard)).toEqual([PHRASES.greeting]);
    // One warning per second at most, however many were refused.
    expect(svc.logs.filter((l) => l.message === 'rate limit reached: answering 429').length).toBeLessThanOrEqual(3);
    figure(`abuse: instance limit 20/s: burst of 80 got ${tooMany} \u00d7 429, the rest 403 (unsigned); /healthz answered 200 throughout`);
  });

  it('has defaults a normal call never reaches', async () => {
    const svc = await serviceWith();
    expect(svc.service.app.hasPlugin('rate-limits')).toBe(true);
    const call = svc.call();
    await call.dial();
    for (let i = 0; i < 12; i++) await call.say(`question ${i}`);
    await call.say('goodbye');
    expect(await call.hangUp()).toBe(200);
    expect(svc.logs.some((l) => l.message === 'rate limit reached: answering 429')).toBe(false);
  });
});

describe('body size', () => {
  it('answers 413 to a body over 64 KiB on every webhook, before the signature is checked, and stores nothing', async () => {
    const svc = await serviceWith();
    const callSid = callSidFor(99);
    for (const path of ['/voice', '/speech-result', '/continue', '/call-status']) {
      const pairs: Array<[string, string]> = [['CallSid', callSid], ['SpeechResult', 'x'.repeat(70_000)]];
      const answer = await signedForm(svc.address, path, pairs);
      expect(answer.status, path).toBe(413);
    }
    expect(await svc.service.store.load(callSid)).toBeNull();
    expect(agent.requests.filter((r) => r.callSid === callSid)).toHaveLength(0);
  });

  it('passes a long utterance under the limit on to the agent cut to 2,000 characters', async () => {
    const svc = await serviceWith();
    const call = svc.call();
    await call.dial();
    const turn = await call.say('word '.repeat(12_000));
    expect(turn.heard.length).toBeGreaterThan(0);
    const record = await svc.service.store.getRecord(call.callSid);
    expect(record?.turns[0]?.caller.length).toBeLessThanOrEqual(2_000);
    expect(agent.requests.at(-1)?.message.length).toBeLessThanOrEqual(2_000);
  });
});

describe('the admin console', () => {
  const paths = ['/admin', '/admin/', '/admin/api/calls', `/admin/api/calls/${callSidFor(1)}`, '/admin/api/calls?limit=500', '/admin/../admin/api/calls'];

  it('is closed without ADMIN_TOKEN: 401 or 404, never 200', async () => {
    const svc = await serviceWith();
    for (const path of paths) {
      for (const authorization of [undefined, 'Bearer ', `Bearer ${ADMIN_TOKEN}`, 'Basic YWRtaW46YWRtaW4=']) {
        const res = await fetch(svc.address + path, authorization === undefined ? {} : { headers: { authorization } });
        expect([401, 404], `${path} with ${authorization}`).toContain(res.status);
      }
    }
  });

  it('with ADMIN_TOKEN set, refuses every route without the exact token', async () => {
    const svc = await serviceWith({ ADMIN_TOKEN });
    const wrong = [
      undefined,
      '',
      'Bearer',
      'Bearer ',
      `Bearer ${ADMIN_TOKEN.slice(0, -1)}`,
      `Bearer ${ADMIN_TOKEN}x`,
      `Bearer ${ADMIN_TOKEN.toUpperCase()}`,
      `Basic ${Buffer.from(`admin:${ADMIN_TOKEN}`).toString('base64')}`,
      `Token ${ADMIN_TOKEN}`,
      ADMIN_TOKEN,
    ];
    let refused = 0;
    for (const path of paths) {
      for (const authorization of wrong) {
        const res = await fetch(svc.address + path + (path.includes('?') ? '&' : '?') + `token=${ADMIN_TOKEN}`, authorization === undefined ? {} : { headers: { authorization } });
        expect([401, 404], `${path} with ${authorization}`).toContain(res.status);
        refused += 1;
      }
    }
    // The check is not vacuous: the right token opens it.
    const ok = await fetch(`${svc.address}/admin/api/calls`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    expect(ok.status).toBe(200);
    figure(`abuse: admin console: ${refused} requests without the exact token refused (401/404), none served`);
  });
});

describe('audio URLs', () => {
  it('serve audio only while signed and unexpired, and a refused fetch never reaches ElevenLabs', async () => {
    let clockOffsetMs = 0;
    const svc = await serviceWith(
      { ...voiceEnv(), AUDIO_URL_TTL_SECONDS: '60' },
      { now: () => Date.now() + clockOffsetMs },
    );
    const call = svc.call();
    await call.dial();
    await call.say('tell me a story');
    const plays = call.heard.filter((h) => h.verb === 'Play');
    expect(plays.length).toBe(2);
    const local = (url: string) => {
      const u = new URL(url);
      return `${svc.address}${u.pathname}${u.search}`;
    };
    for (const play of plays) if (play.verb === 'Play') expect((await fetch(local(play.url))).status).toBe(200);

    const before = eleven.requests.length;
    clockOffsetMs = 61_000;
    for (const play of plays) {
      if (play.verb !== 'Play') continue;
      const res = await fetch(local(play.url));
      expect(res.status).toBe(403);
      expect(await res.text()).toBe('Forbidden: audio link expired');
      // Re-signing with a later expiry needs the key: a forged later `exp` is refused too.
      const later = new URL(play.url);
      later.searchParams.set('exp', String(Math.floor(Date.now() / 1000) + 3_600));
      expect((await fetch(local(later.toString()))).status).toBe(403);
    }
    // Someone else's call, or a path built from a Twilio signature, is no audio link either.
    const forged = `${svc.address}/audio/call/${call.callSid}/t0?exp=${Math.floor(Date.now() / 1000) + 60}&sig=${twilioSignature('/x', {}).replace(/=/g, '')}`;
    expect((await fetch(forged)).status).toBe(403);
    expect(eleven.requests.length).toBe(before);
  });
});

describe('secrets', () => {
  it('never writes the Twilio token, the ElevenLabs key or the admin token to the log, whatever fails', async () => {
    const svc = await serviceWith({ ...voiceEnv(), ADMIN_TOKEN, LOG_LEVEL: 'trace' });
    const call = svc.call();
    await call.dial();
    // ElevenLabs refuses the key and echoes it back in its error message.
    eleven.setBehaviour({
      kind: 'raw',
      status: 401,
      contentType: 'application/json',
      body: JSON.stringify({ detail: { status: 'invalid_api_key', message: `Invalid API key: ${ELEVENLABS_KEY}` } }),
    });
    expect(spoken((await call.say('first')).heard)).toEqual(['Agent heard: first (history: 0)']);
    // The agent fails in several ways.
    agent.setBehaviour({ kind: 'status', status: 500, body: '<html>Internal Server Error</html>' });
    await call.say('second');
    agent.setBehaviour({ kind: 'malformed' });
    await call.say('third');
    agent.setBehaviour({ kind: 'reply' });
    eleven.setBehaviour({ kind: 'audio' });
    // Forged, wrongly signed, rate-limited and admin requests carrying the secrets.
    await fetch(`${svc.address}/voice`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-twilio-signature': AUTH_TOKEN },
      body: `CallSid=${callSidFor(5)}`,
    });
    await fetch(`${svc.address}/admin/api/calls`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    await fetch(`${svc.address}/admin/api/calls?token=${ADMIN_TOKEN}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}-wrong` } });
    await signedForm(svc.address, '/speech-result', [['CallSid', call.callSid], ['SpeechResult', 'one more question']]);
    await call.hangUp();

    expect(svc.rawLogs.length).toBeGreaterThan(5);
    const secrets = [AUTH_TOKEN, ELEVENLABS_KEY, ADMIN_TOKEN];
    expect(linesWithSecrets(svc.rawLogs, secrets)).toEqual([]);
    const record = await svc.service.store.getRecord(call.callSid);
    expect(record?.turns.some((t) => t.failure?.startsWith('agent: '))).toBe(true);
    figure(`abuse: ${svc.rawLogs.length} log lines (trace level) after failing calls and hostile requests: 0 contain a secret`);
  });
});
