/**
 * Abuse: a phone line is public. Rate limits per caller, for signed webhooks and
 * for unsigned traffic (per address too), body size and shape limits, slow clients
 * cut off, forged webhooks logged at most once a second, the admin console closed
 * without its token, audio URLs that only work signed and unexpired, and no secret
 * in any log line after calls that fail in every way.
 */
import { request } from 'node:http';
import { connect } from 'node:net';
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

  it('limits signed webhooks per instance in a burst, keeps health checks answering, and recovers after the window', async () => {
    const svc = await serviceWith({ RATE_LIMIT_GLOBAL_PER_SECOND: '20' });
    const burst = await Promise.all(Array.from({ length: 80 }, () => svc.call().webhook('/voice', { CallStatus: 'ringing' }).then((r) => r.status)));
    const health = await Promise.all(Array.from({ length: 10 }, () => fetch(`${svc.address}/healthz`).then((r) => r.status)));
    const tooMany = burst.filter((s) => s === 429).length;
    expect(tooMany).toBeGreaterThanOrEqual(55);
    expect(burst.every((s) => s === 429 || s === 200)).toBe(true);
    expect(health).toEqual(Array(10).fill(200));
    expect((await fetch(`${svc.address}/readyz`)).status).toBe(200);

    const limited = await svc.call().webhook('/voice', { CallStatus: 'ringing' });
    expect(limited.status).toBe(429);
    expect(limited.body).toMatch(/^Too Many Requests: this service is taking too many requests, retry in \d+ s$/);
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    const call = svc.call();
    expect(spoken((await call.dial()).heard)).toEqual([PHRASES.greeting]);
    // One warning per second at most, however many were refused.
    expect(svc.logs.filter((l) => l.message === 'rate limit reached: answering 429').length).toBeLessThanOrEqual(3);
    figure(`abuse: signed limit 20/s: burst of 80 signed webhooks got ${tooMany} \u00d7 429, the rest TwiML; /healthz answered 200 throughout`);
  });

  it('keeps unsigned traffic from locking Twilio out: a flood of 404s, unsigned and forged webhooks, then a signed /voice is served', async () => {
    const svc = await serviceWith({ RATE_LIMIT_GLOBAL_PER_SECOND: '50', RATE_LIMIT_UNSIGNED_PER_SECOND: '20', RATE_LIMIT_UNSIGNED_PER_ADDRESS_PER_SECOND: '1000' });
    const form = { 'content-type': 'application/x-www-form-urlencoded' };
    const flood = await Promise.all(
      Array.from({ length: 300 }, (_, i) => {
        const kind = i % 4;
        // An unknown path counts as unsigned even with a signature header: nothing checks it there.
        if (kind === 0) return fetch(`${svc.address}/nothing-here`, i % 8 ? {} : { headers: { 'x-twilio-signature': 'forged' } }).then((r) => r.status);
        if (kind === 1) return fetch(`${svc.address}/voice`, { method: 'POST', headers: form, body: `CallSid=${callSidFor(i)}` }).then((r) => r.status);
        if (kind === 2) return fetch(`${svc.address}/audio/phrase/greeting`).then((r) => r.status);
        // A forged signature is checked (403), never counted against Twilio's budget.
        return fetch(`${svc.address}/voice`, { method: 'POST', headers: { ...form, 'x-twilio-signature': 'forged' }, body: `CallSid=${callSidFor(i)}` }).then((r) => r.status);
      }),
    );
    const refused = flood.filter((s) => s === 429).length;
    expect(refused).toBeGreaterThanOrEqual(150);
    expect(flood.filter((s, i) => i % 4 === 3).every((s) => s === 403)).toBe(true);
    // Within the same second, Twilio's webhooks go on as if nothing happened.
    const call = svc.call();
    expect(spoken((await call.dial()).heard)).toEqual([PHRASES.greeting]);
    expect(spoken((await call.say('are you open?')).heard)).toEqual(['Agent heard: are you open? (history: 0)']);
    expect((await fetch(`${svc.address}/nothing-here`)).status).toBe(429);
    expect(svc.logs.some((l) => l.message === 'rate limit reached: answering 429' && l.limit === 'unsigned')).toBe(true);
    figure(`abuse: unsigned limit 20/s, signed 50/s: a flood of 300 unsigned, unknown-path and forged requests got ${refused} \u00d7 429 (the forged ones 403); a signed call went on, greeting and answer`);
  });

  it('limits unsigned traffic per client address: one address flooding leaves another one served', async () => {
    const svc = await serviceWith({ RATE_LIMIT_UNSIGNED_PER_ADDRESS_PER_SECOND: '10', RATE_LIMIT_UNSIGNED_PER_SECOND: '1000' });
    const { port } = new URL(svc.address);
    // Every 127.x.y.z address is this machine's loopback: two clients with two addresses.
    const from = (localAddress: string) =>
      new Promise<number>((resolve, reject) => {
        request({ host: '127.0.0.1', port, path: '/nothing-here', localAddress }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        })
          .on('error', reject)
          .end();
      });
    const flooding = await Promise.all(Array.from({ length: 40 }, () => from('127.0.0.2')));
    expect(flooding.filter((s) => s === 429).length).toBeGreaterThanOrEqual(25);
    expect(await from('127.0.0.3')).toBe(404);
    expect(await from('127.0.0.2')).toBe(429);
    expect(spoken((await svc.call().dial()).heard)).toEqual([PHRASES.greeting]);
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

describe('body size and shape', () => {
  it('answers 413 to a body over 32 KiB on every webhook, before the signature is checked, and stores nothing', async () => {
    const svc = await serviceWith();
    const callSid = callSidFor(99);
    for (const path of ['/voice', '/speech-result', '/continue', '/call-status']) {
      const pairs: Array<[string, string]> = [['CallSid', callSid], ['SpeechResult', 'x'.repeat(40_000)]];
      const answer = await signedForm(svc.address, path, pairs);
      expect(answer.status, path).toBe(413);
    }
    expect(await svc.service.store.load(callSid)).toBeNull();
    expect(agent.requests.filter((r) => r.callSid === callSid)).toHaveLength(0);
  });

  it('refuses a form of thousands of parameters with 413 before the signature is checked, and still serves a real caller', async () => {
    const svc = await serviceWith();
    // The flood that cost 13.5 ms of the event loop each in the signature check: empty keys, under the size limit.
    const keys = Array.from({ length: 3_000 }, (_, i) => `k${i}=`).join('&');
    expect(keys.length).toBeLessThan(32 * 1024);
    const forged = await fetch(`${svc.address}/voice`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-twilio-signature': 'bogus' },
      body: keys,
    });
    // 413, not the signature check's 403: the form was refused before any signature was computed.
    expect(forged.status).toBe(413);
    expect(await forged.text()).toBe('Content Too Large: a Twilio webhook form has at most 100 parameters');
    // Signed or not makes no difference.
    const pairs = Array.from({ length: 101 }, (_, i): [string, string] => [`k${i}`, '']);
    const signed = await signedForm(svc.address, '/voice', [['CallSid', callSidFor(98)], ...pairs]);
    expect(signed.status).toBe(413);
    expect(svc.logs.some((l) => l.message === 'rejected a webhook with a missing or wrong Twilio signature')).toBe(false);

    // What Twilio sends to /voice (https://www.twilio.com/docs/voice/twiml#request-parameters): served.
    const call = svc.call();
    const geography = Object.fromEntries(
      ['From', 'To', 'Caller', 'Called'].flatMap((who) => [[`${who}City`, 'SAN FRANCISCO'], [`${who}State`, 'CA'], [`${who}Zip`, '94105'], [`${who}Country`, 'US']]),
    );
    const greeted = await call.webhook('/voice', {
      CallStatus: 'ringing', Caller: '+15550100001', Called: '+15550100002', CallToken: 'x'.repeat(600), StirVerstat: 'TN-Validation-Passed-A', ...geography,
    });
    expect(greeted.status).toBe(200);
    expect(greeted.body).toContain(PHRASES.greeting);
  });

  it('passes a long utterance under the limit on to the agent cut to 2,000 characters', async () => {
    const svc = await serviceWith();
    const call = svc.call();
    await call.dial();
    const turn = await call.say('word '.repeat(6_000));
    expect(turn.heard.length).toBeGreaterThan(0);
    const record = await svc.service.store.getRecord(call.callSid);
    expect(record?.turns[0]?.caller.length).toBeLessThanOrEqual(2_000);
    expect(agent.requests.at(-1)?.message.length).toBeLessThanOrEqual(2_000);
  });
});

describe('slow clients', () => {
  it('cuts off a client that trickles its body, and one that sends nothing, within the 5 s request timeout', { timeout: 20_000 }, async () => {
    const svc = await serviceWith();
    const { port } = new URL(svc.address);
    const client = (trickle: boolean) =>
      new Promise<{ answer: string; bytesSent: number; elapsedMs: number }>((resolve) => {
        const started = Date.now();
        const socket = connect(Number(port), '127.0.0.1');
        let answer = '';
        let bytesSent = 0;
        let timer: NodeJS.Timeout | undefined;
        socket.on('connect', () => {
          if (!trickle) return;
          socket.write(`POST /voice HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nX-Twilio-Signature: x\r\nContent-Length: 1000\r\n\r\n`);
          // A byte every 250 ms: never idle, never done.
          timer = setInterval(() => {
            if (socket.writable) socket.write('a', () => (bytesSent += 1));
          }, 250);
        });
        socket.on('data', (chunk: Buffer) => (answer += chunk.toString()));
        socket.on('error', () => undefined);
        socket.on('close', () => {
          clearInterval(timer);
          resolve({ answer, bytesSent, elapsedMs: Date.now() - started });
        });
      });
    const [trickling, silent] = await Promise.all([client(true), client(false)]);
    for (const cut of [trickling, silent]) {
      expect(cut.answer).toMatch(/^HTTP\/1\.1 408 Request Timeout/);
      // The bound, plus Node's 1 s checking interval, plus room for a loaded machine.
      expect(cut.elapsedMs).toBeLessThan(9_000);
    }
    // Still sending when it was cut: the request timeout, not an idle timeout, ended it.
    expect(trickling.bytesSent).toBeGreaterThan(15);
    expect(spoken((await svc.call().dial()).heard)).toEqual([PHRASES.greeting]);
    figure(`abuse: a body trickled a byte every 250 ms was cut with 408 after ${(trickling.elapsedMs / 1000).toFixed(1)} s, a silent connection after ${(silent.elapsedMs / 1000).toFixed(1)} s`);
  });
});

describe('forged webhooks in the log', () => {
  it('are one warning line a second, each saying how many it left out', async () => {
    const svc = await serviceWith();
    const forge = () =>
      fetch(`${svc.address}/speech-result`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-twilio-signature': 'forged' },
        body: `CallSid=${callSidFor(7)}&SpeechResult=hello`,
      }).then((r) => r.status);
    const first = await Promise.all(Array.from({ length: 200 }, forge));
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    const last = await forge();
    expect([...first, last].every((s) => s === 403)).toBe(true);
    const lines = svc.logs.filter((l) => l.message === 'rejected a webhook with a missing or wrong Twilio signature');
    expect(lines.length).toBeGreaterThanOrEqual(2);
    expect(lines.length).toBeLessThanOrEqual(4);
    // Nothing is lost from the count: every forged request is in a line or in a line's `suppressed`.
    expect(lines.length + lines.reduce((sum, l) => sum + Number(l.suppressed), 0)).toBe(201);
    figure(`abuse: 201 forged webhooks wrote ${lines.length} warning lines (the rest counted in \`suppressed\`)`);
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
