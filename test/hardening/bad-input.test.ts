/**
 * Bad input: random and hostile requests at every route of the real service, over
 * loopback HTTP. Most are correctly signed (so they get past the signature check
 * and reach the parsers, the engine and the TwiML renderer), some are forged or
 * unsigned. Whatever comes in, the answer is a 4xx, or a 200 with well-formed
 * TwiML whose only URLs are the service's own; never a 5xx, never a crash, never a
 * change to a call made by a request that was refused.
 *
 * HARDENING_RUNS scales the number of generated cases (default 1); a failing case
 * prints fast-check's seed and path to replay it.
 */
import { connect } from 'node:net';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseTwiml } from '../../src/phone/twilio-caller.ts';
import { createAudioUrlSigner } from '../../src/speech/audio-url.ts';
import { startFakeAgent, type FakeAgent } from '../fakes/agent-server.ts';
import { startFakeElevenLabs, type FakeElevenLabs } from '../fakes/elevenlabs-server.ts';
import { AUTH_TOKEN, ELEVENLABS_KEY, PUBLIC_BASE_URL, startService, type RunningService } from '../support/service.ts';
import { callSidFor, figure, paramsOf, twilioSignature } from './support.ts';

const SCALE = Number(process.env.HARDENING_RUNS ?? '1');
const WEBHOOK_CASES = Math.round(4_000 * SCALE);
const GET_CASES = Math.round(1_000 * SCALE);

let agent: FakeAgent;
let eleven: FakeElevenLabs;
/** Two services: replies read by the phone's voice (agent text lands in TwiML), and replies as signed audio. */
const services: Record<'say' | 'voice', RunningService> = {} as never;

beforeAll(async () => {
  agent = await startFakeAgent();
  eleven = await startFakeElevenLabs({ apiKey: ELEVENLABS_KEY });
  services.say = await startService({ KOOZIE_AGENT_URI: agent.url, WEBHOOK_DEADLINE_MS: '2000' });
  services.voice = await startService({
    KOOZIE_AGENT_URI: agent.url,
    WEBHOOK_DEADLINE_MS: '2000',
    ELEVENLABS_API_KEY: ELEVENLABS_KEY,
    ELEVEN_VOICE_ID: 'voice-1',
    ELEVENLABS_BASE_URL: eleven.url,
  });
});

afterAll(async () => {
  await Promise.all(Object.values(services).map((s) => s.close()));
  await agent.close();
  await eleven.close();
});

const WEBHOOKS = ['/voice', '/speech-result', '/continue', '/call-status'] as const;
const TWIML_VERBS = new Set(['Say', 'Play', 'Pause', 'Gather', 'Redirect', 'Hangup']);
/** What a refused or odd request may be answered with. */
const CLIENT_ERRORS = new Set([400, 401, 403, 404, 405, 413, 414, 415, 429, 431]);

const XML_AND_TWIML = [
  '</Say><Hangup/>',
  '<Redirect>https://evil.example/next</Redirect>',
  '<Play>https://evil.example/premium.mp3</Play>',
  '<Dial>+19005550100</Dial>',
  ']]>',
  '<![CDATA[<Hangup/>]]>',
  '<?xml version="1.0"?><Response><Hangup/></Response>',
  '<!DOCTYPE r [<!ENTITY e SYSTEM "file:///etc/passwd">]><r>&e;</r>',
  '&amp;',
  '&',
  '&#0;',
  '&#x1F;',
  '&lt;',
  '<!-- -->',
  '"\'<>&',
  '<Say voice="alice" loop="0">x</Say>',
];
const ODD = [
  '\u0000',
  '\u0007\u0008\u000b\u000c',
  '\u001b[31mred\u001b[0m',
  '\r\n\r\nX-Injected: 1',
  '\u0085\u2028\u2029',
  '\ufffe\uffff',
  '\ud800',
  '\udfff',
  '\u202e\u200b\u200d',
  'A\u0301\u0302\u0303',
  '\u{1F44D}\u{1F3FD}',
  '\ufdfd',
  '%00',
  '%',
  '%zz',
  '+',
  '=&=',
  '${process.env.TWILIO_AUTH_TOKEN}',
  "'; DROP TABLE calls; --",
  '{{7*7}}',
  '__proto__',
  'constructor',
  'null',
  'NaN',
  '-1',
  '1e309',
  '0.5',
  'completed',
  'in-progress',
  'goodbye',
];

const hostileText: fc.Arbitrary<string> = fc.oneof(
  { weight: 3, arbitrary: fc.string({ maxLength: 60 }) },
  { weight: 3, arbitrary: fc.string({ unit: 'binary', maxLength: 60 }) },
  { weight: 2, arbitrary: fc.string({ unit: 'grapheme', maxLength: 40 }) },
  { weight: 2, arbitrary: fc.string({ unit: fc.constantFrom(...ODD, ...XML_AND_TWIML), maxLength: 8 }) },
  { weight: 2, arbitrary: fc.constantFrom(...XML_AND_TWIML, ...ODD) },
  {
    weight: 1,
    arbitrary: fc
      .tuple(fc.integer({ min: 1_000, max: 20_000 }), fc.constantFrom('a', 'é', '\u{1F600}', '<Hangup/>', '\u0000'))
      .map(([n, unit]) => unit.repeat(Math.ceil(n / unit.length))),
  },
);

const callSidValue = fc.oneof(
  { weight: 4, arbitrary: fc.constant('@live') },
  { weight: 3, arbitrary: fc.integer({ min: 1, max: 2 ** 40 }).map(callSidFor) },
  { weight: 1, arbitrary: fc.constantFrom('CA123', `ca${'0'.repeat(32)}`, `CA${'0'.repeat(32)}\n`, `CA${'g'.repeat(32)}`, `CA${'\u0660'.repeat(32)}`, '') },
  { weight: 1, arbitrary: hostileText },
);

const TWILIO_FIELDS = ['From', 'To', 'CallStatus', 'SpeechResult', 'Confidence', 'CallDuration', 'AccountSid', 'Direction', 'Digits', 'ApiVersion', 'Caller'];
const fieldName = fc.oneof(
  { weight: 8, arbitrary: fc.constantFrom(...TWILIO_FIELDS) },
  { weight: 1, arbitrary: fc.constantFrom('__proto__', 'constructor', 'prototype', 'hasOwnProperty', 'toString', '', 'CallSid[]', 'callsid', 'SpeechResult ') },
  { weight: 1, arbitrary: hostileText },
);
const fieldValue = fc.oneof(
  { weight: 3, arbitrary: hostileText },
  { weight: 1, arbitrary: fc.constantFrom('completed', 'busy', 'no-answer', 'ringing', 'in-progress', 'COMPLETED', 'completed ', '0.87', '-0.5', '2', '12', '9999999999', '+15550100001', 'anonymous', 'sip:x@y', 'client:alice') },
);

type Encoding = 'form' | 'form-charset' | 'form-raw' | 'json' | 'text' | 'xml' | 'multipart' | 'none' | 'oversized';
type Auth = 'signed' | 'forged' | 'wrong-token' | 'unsigned';

interface WebhookCase {
  service: 'say' | 'voice';
  method: string;
  path: string;
  query: string;
  callSid: string | undefined;
  /** Repeat CallSid (a parameter Twilio sends once). */
  repeatCallSid: boolean;
  /** What the caller said: most cases carry one, so the agent and the renderer see hostile text. */
  speech: string | undefined;
  fields: Array<[string, string]>;
  encoding: Encoding;
  auth: Auth;
  idempotencyToken: string | undefined;
}

const webhookCase: fc.Arbitrary<WebhookCase> = fc.record({
  service: fc.constantFrom('say', 'voice'),
  method: fc.oneof({ weight: 19, arbitrary: fc.constant('POST') }, { weight: 1, arbitrary: fc.constantFrom('GET', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD') }),
  path: fc.oneof(
    { weight: 20, arbitrary: fc.constantFrom('/voice', '/speech-result', '/speech-result', '/continue', '/call-status') },
    { weight: 1, arbitrary: fc.constantFrom('/voice/', '/VOICE', '/speech-result/..', '/continue%00', '//voice', '/admin', '/admin/api/calls', '/call-status.xml', '/audio/phrase/greeting') },
  ),
  query: fc.oneof(
    { weight: 6, arbitrary: fc.constant('') },
    { weight: 1, arbitrary: fc.constantFrom('?attempt=1', '?attempt=2', '?attempt=99', '?attempt=-1', '?attempt=1&attempt=2', '?attempt=%00', '?x=<Hangup/>', '?attempt=1e3') },
    { weight: 1, arbitrary: hostileText.filter((t) => t.length < 300).map((t) => `?attempt=${encodeURIComponent(t.toWellFormed())}`) },
    // A recovery redirect carries the caller's words back in its (signed) URL: hostile ones too.
    {
      weight: 1,
      arbitrary: fc
        .record({
          attempt: fc.constantFrom('1', '2', '3', 'x'),
          heardAt: fc.oneof(fc.nat().map(String), fc.constantFrom('', '-1', '1e3', '9'.repeat(16), '12&heardAt=13'), hostileText.filter((t) => t.length < 40)),
          speech: fc.option(hostileText.filter((t) => t.length < 300), { nil: undefined }),
          confidence: fc.option(fc.oneof(fc.double().map(String), fc.constantFrom('0.9', 'NaN', '')), { nil: undefined }),
        })
        .map(({ attempt, heardAt, speech, confidence }) => {
          const q = new URLSearchParams({ attempt, heardAt });
          if (speech !== undefined) q.append('SpeechResult', speech.toWellFormed());
          if (confidence !== undefined) q.append('Confidence', confidence);
          return `?${q.toString()}`;
        }),
    },
  ),
  callSid: fc.option(callSidValue, { nil: undefined, freq: 12 }),
  repeatCallSid: fc.oneof({ weight: 9, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
  speech: fc.option(hostileText, { nil: undefined, freq: 3 }),
  fields: fc.array(fc.tuple(fieldName, fieldValue), { maxLength: 6 }),
  encoding: fc.oneof(
    { weight: 24, arbitrary: fc.constantFrom<Encoding>('form') },
    { weight: 2, arbitrary: fc.constantFrom<Encoding>('form-charset', 'form-raw') },
    { weight: 1, arbitrary: fc.constantFrom<Encoding>('json', 'text', 'xml', 'multipart', 'none', 'oversized') },
  ),
  auth: fc.oneof(
    { weight: 16, arbitrary: fc.constant<Auth>('signed') },
    { weight: 4, arbitrary: fc.constantFrom<Auth>('forged', 'wrong-token', 'unsigned') },
  ),
  idempotencyToken: fc.option(fc.oneof(fc.uuid(), fc.string({ minLength: 1, maxLength: 200 }).map((s) => s.replace(/[^\x20-\x7e]/g, '?'))), { nil: undefined }),
});

const stats = {
  cases: 0,
  liveCalls: 0,
  pastSignature: 0,
  byStatus: new Map<number, number>(),
  byAuth: new Map<Auth, number>(),
  twimlChecked: 0,
};

function count<K>(map: Map<K, number>, key: K) {
  map.set(key, (map.get(key) ?? 0) + 1);
}

interface Built {
  url: string;
  init: RequestInit;
}

/** Builds the request as the case says, signing what the server will parse. */
function build(c: WebhookCase, address: string, callSid: string | undefined): Built {
  const pairs: Array<[string, string]> = [];
  if (callSid !== undefined) pairs.push(['CallSid', callSid]);
  if (callSid !== undefined && c.repeatCallSid) pairs.push(['CallSid', callSidFor(7)]);
  if (c.speech !== undefined) pairs.push(['SpeechResult', c.speech]);
  pairs.push(...c.fields);
  // fetch normalises the path; sign exactly what is sent.
  const target = new URL(address + c.path + c.query);
  const pathAndQuery = target.pathname + target.search;

  let body: string | Blob | undefined;
  let contentType: string | undefined;
  let parsed: Record<string, unknown> = {};
  switch (c.encoding) {
    case 'form':
    case 'form-charset':
      body = new URLSearchParams(pairs).toString();
      contentType = c.encoding === 'form' ? 'application/x-www-form-urlencoded' : 'application/x-www-form-urlencoded; charset=UTF-8';
      parsed = paramsOf([...new URLSearchParams(body)]);
      break;
    case 'form-raw':
      // Not percent-encoded: stray %, & and = as they come.
      body = pairs.map(([k, v]) => `${k}=${v}`).join('&');
      contentType = 'application/x-www-form-urlencoded';
      parsed = paramsOf([...new URLSearchParams(body)]);
      break;
    case 'json':
      parsed = Object.fromEntries(pairs.map(([k, v], i) => [k, i % 3 === 2 ? { nested: [v] } : v]));
      body = JSON.stringify(parsed);
      contentType = 'application/json';
      parsed = JSON.parse(body) as Record<string, unknown>;
      break;
    case 'text':
      body = new URLSearchParams(pairs).toString();
      contentType = 'text/plain';
      break;
    case 'xml':
      body = `<Request><CallSid>${callSid ?? ''}</CallSid></Request>`;
      contentType = 'text/xml';
      break;
    case 'multipart':
      body = `--x\r\nContent-Disposition: form-data; name="CallSid"\r\n\r\n${callSid ?? ''}\r\n--x--\r\n`;
      contentType = 'multipart/form-data; boundary=x';
      break;
    case 'none':
      body = new Blob([new URLSearchParams(pairs).toString()]);
      break;
    case 'oversized':
      pairs.push(['SpeechResult', 'a'.repeat(70_000 + pairs.length)]);
      body = new URLSearchParams(pairs).toString();
      contentType = 'application/x-www-form-urlencoded';
      parsed = paramsOf(pairs);
      break;
  }

  const headers: Record<string, string> = {};
  if (contentType) headers['content-type'] = contentType;
  if (c.idempotencyToken !== undefined) headers['i-twilio-idempotency-token'] = c.idempotencyToken;
  if (c.auth === 'signed') headers['x-twilio-signature'] = twilioSignature(pathAndQuery, parsed);
  if (c.auth === 'wrong-token') headers['x-twilio-signature'] = twilioSignature(pathAndQuery, parsed, 'not-the-auth-token');
  if (c.auth === 'forged') headers['x-twilio-signature'] = Buffer.from(pathAndQuery).toString('base64').slice(0, 28);
  const withBody = c.method !== 'GET' && c.method !== 'HEAD';
  return {
    url: target.toString(),
    init: { method: c.method, headers, ...(withBody && body !== undefined ? { body } : {}) },
  };
}

/** Every verb is a TwiML voice verb, and every URL in it is this service's own. */
function checkTwiml(document: string) {
  const walk = (nodes: ReturnType<typeof parseTwiml>) => {
    for (const node of nodes) {
      const [name] = Object.keys(node).filter((k) => k !== ':@');
      if (name === undefined || name === '#text') continue;
      expect(TWIML_VERBS, `unexpected <${name}> in ${document}`).toContain(name);
      const attrs = node[':@'] ?? {};
      const children = (node[name] as ReturnType<typeof parseTwiml>) ?? [];
      const text = children.map((child) => (typeof child['#text'] === 'string' ? child['#text'] : '')).join('').trim();
      if (name === 'Play' || name === 'Redirect') expect(text.startsWith(`${PUBLIC_BASE_URL}/`), document).toBe(true);
      if (name === 'Play') expect(text).toMatch(/^https:\/\/voice\.example\.test\/audio\/(phrase\/\w+|call\/CA[0-9a-f]{32}\/t\d+(p\d+)?)\?exp=\d+&sig=[\w-]{43}$/);
      if (name === 'Gather') {
        expect(attrs.action).toMatch(new RegExp(`^${PUBLIC_BASE_URL.replaceAll('.', '\\.')}/speech-result\\?floor=\\d+$`));
        walk(children);
      }
    }
  };
  walk(parseTwiml(document));
}

describe('bad input at every route', () => {
  it(`answers ${WEBHOOK_CASES} random and hostile webhook requests with a 4xx or well-formed TwiML, never a 5xx`, { timeout: 240_000 }, async () => {
    await fc.assert(
      fc.asyncProperty(webhookCase, async (c) => {
        const svc = services[c.service];
        let callSid = c.callSid;
        if (callSid === '@live') {
          // Its own number: the per-caller limit is not what this case is about.
          const live = svc.call({ from: `+1555${String(stats.liveCalls).padStart(7, '0')}` });
          await live.dial();
          stats.liveCalls += 1;
          callSid = live.callSid;
        }
        const before = callSid && /^CA[0-9a-f]{32}$/.test(callSid) ? await svc.service.store.load(callSid) : null;
        const { url, init } = build(c, svc.address, callSid);
        const response = await fetch(url, init);
        const body = await response.text();
        stats.cases += 1;
        count(stats.byStatus, response.status);
        count(stats.byAuth, c.auth);

        expect(response.status, `${c.method} ${c.path} answered ${response.status}: ${body.slice(0, 300)}`).toBeLessThan(500);
        if (response.status !== 200) expect(CLIENT_ERRORS, `${response.status}: ${body.slice(0, 300)}`).toContain(response.status);
        const webhook = (WEBHOOKS as readonly string[]).includes(new URL(url).pathname) && c.method === 'POST';
        if (webhook && c.auth !== 'signed') expect(response.status, 'an unsigned or forged webhook was served').not.toBe(200);
        if (response.status !== 403 && webhook) stats.pastSignature += 1;
        if (webhook && response.status === 200) {
          expect(response.headers.get('content-type')).toMatch(/^text\/xml/);
          checkTwiml(body);
          stats.twimlChecked += 1;
        }
        if (before && response.status >= 400) {
          // A refused request changes nothing about the call.
          expect((await svc.service.store.load(before.callSid))?.revision).toBe(before.revision);
        }
      }),
      { numRuns: WEBHOOK_CASES, ...(process.env.HARDENING_SEED ? { seed: Number(process.env.HARDENING_SEED) } : {}) },
    );
  });

  it(`answers ${GET_CASES} random audio, health and unknown GETs with a 4xx or what was asked for, never a 5xx`, async () => {
    const signer = createAudioUrlSigner({ secret: AUTH_TOKEN, ttlSec: 600 });
    const expired = createAudioUrlSigner({ secret: AUTH_TOKEN, ttlSec: 600, now: () => Date.now() - 3_600_000 });
    const segment = fc.oneof(
      fc.constantFrom('greeting', 'apology', 'hold', 'goodbye', '__proto__', 'constructor', 'hasOwnProperty', '..', '%2e%2e', 'greeting.mp3'),
      fc.integer({ min: 1, max: 2 ** 40 }).map(callSidFor),
      hostileText.filter((t) => t.length > 0 && t.length < 300),
    );
    const getCase = fc.record({
      service: fc.constantFrom<'say' | 'voice'>('say', 'voice'),
      shape: fc.constantFrom('phrase', 'call', 'health', 'ready', 'other'),
      a: segment,
      b: fc.oneof(fc.constantFrom('t0', 't1', 't999999', 't-1', 'x'), segment),
      signing: fc.constantFrom('signed', 'expired', 'garbage', 'none'),
      garbage: fc.string({ maxLength: 80 }),
    });
    await fc.assert(
      fc.asyncProperty(getCase, async (c) => {
        const svc = services[c.service];
        let path: string;
        if (c.shape === 'phrase') path = `/audio/phrase/${encodeURIComponent(c.a.toWellFormed())}`;
        else if (c.shape === 'call') path = `/audio/call/${encodeURIComponent(c.a.toWellFormed())}/${encodeURIComponent(c.b.toWellFormed())}`;
        else if (c.shape === 'health') path = '/healthz';
        else if (c.shape === 'ready') path = '/readyz';
        else path = `/${encodeURIComponent(c.a.toWellFormed())}`;
        const decoded = safeDecode(new URL(svc.address + path).pathname);
        let query = '';
        if (c.signing === 'signed') query = signer.sign(decoded).slice(decoded.length);
        if (c.signing === 'expired') query = expired.sign(decoded).slice(decoded.length);
        if (c.signing === 'garbage') query = `?exp=${encodeURIComponent(c.garbage)}&sig=${encodeURIComponent(c.garbage)}&sig=x`;
        const response = await fetch(new URL(svc.address + path + query));
        const body = Buffer.from(await response.arrayBuffer());
        stats.cases += 1;
        count(stats.byStatus, response.status);
        expect(response.status, `GET ${path}${query} answered ${response.status}: ${body.toString().slice(0, 200)}`).toBeLessThan(500);
        if (response.status === 200 && path.startsWith('/audio/')) {
          expect(c.signing).toBe('signed');
          expect(response.headers.get('content-type')).toBe('audio/wav');
          expect(body.toString('ascii', 0, 4)).toBe('RIFF');
        } else if (response.status !== 200) {
          expect(CLIENT_ERRORS).toContain(response.status);
        }
      }),
      { numRuns: GET_CASES },
    );
  });

  it('survives broken HTTP on the socket: bad framing, lies about length, half-sent bodies', async () => {
    const svc = services.say;
    const port = Number(new URL(svc.address).port);
    const form = `CallSid=${callSidFor(1)}&From=%2B1&To=%2B2`;
    const raw = [
      `POST /voice HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000000\r\n\r\n${form}`,
      `POST /voice HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 10\r\nContent-Length: 20\r\n\r\n${form}`,
      `POST /voice HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n`,
      `POST /voice HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n`,
      `POST /voice HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n${`4000\r\n${'a'.repeat(0x4000)}\r\n`.repeat(6)}0\r\n\r\n`,
      `POST /speech-result HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 500\r\n\r\nCallSid=CA`,
      `POST /voice HTTP/1.1\r\nHost: x\r\nX-Twilio-Signature: ${'A'.repeat(100_000)}\r\n\r\n`,
      `POST /voice HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\n\u0000\u0001\u0002`,
      `POST /voice HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded; charset=utf-16\r\nContent-Length: ${form.length}\r\n\r\n${form}`,
      `GET /healthz HTTP/1.0\r\n\r\n`,
      `POST /voice HTTP/9.9\r\nHost: x\r\n\r\n`,
      `BREW /voice HTTP/1.1\r\nHost: x\r\n\r\n`,
      `POST /voice\r\n\r\n`,
      `POST /voice HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: -1\r\n\r\n`,
      `POST /voice HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nExpect: 100-continue\r\nContent-Length: ${form.length}\r\n\r\n${form}`,
      `POST /voice HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 4\r\n\r\nzzzz`,
      `POST /voice HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: ${form.length}\r\n\r\n${form}POST /voice HTTP/1.1\r\nHost: x\r\n\r\n`,
      `POST /voice HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: ${form.length}\r\n\r\n${form.slice(0, 5)}`,
    ];
    const statuses: Array<number | 'closed'> = [];
    for (const request of raw) {
      statuses.push(await rawExchange(port, request));
      stats.cases += 1;
    }
    for (const status of statuses) {
      if (status !== 'closed') expect(status, `raw answers: ${statuses.join(', ')}`).toBeLessThan(500);
    }
    expect((await fetch(`${svc.address}/healthz`)).status).toBe(200);
    figure(`raw socket cases: ${raw.length}, answers ${statuses.join(', ')}`);
  });

  afterAll(() => {
    const errors = Object.values(services).flatMap((s) => s.logs.filter((l) => l.level === 'error' || l.level === 'fatal'));
    figure(
      `bad input: ${stats.cases} requests (${stats.liveCalls} live calls dialled first, ${agent.requests.length} agent turns run); ` +
        `${stats.pastSignature} webhooks got past the signature check, ${stats.twimlChecked} TwiML answers checked; ` +
        `by auth ${JSON.stringify(Object.fromEntries(stats.byAuth))}; ` +
        `by status ${JSON.stringify(Object.fromEntries([...stats.byStatus].sort(([a], [b]) => a - b)))}; ` +
        `error log lines ${errors.length}`,
    );
    // Nothing a request carried made the service fail inside (it would have answered recovery TwiML).
    expect(errors.map((l) => `${String(l.message)} ${JSON.stringify(l.err ?? '')}`)).toEqual([]);
  });
});

function safeDecode(path: string): string {
  try {
    return decodeURIComponent(path);
  } catch {
    return path;
  }
}

/** Sends bytes as they are and reads the status line of the answer, if any, within a second. */
function rawExchange(port: number, request: string): Promise<number | 'closed'> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    let received = '';
    const done = () => {
      socket.destroy();
      const match = /^HTTP\/1\.[01] (\d{3})/.exec(received);
      resolve(match ? Number(match[1]) : 'closed');
    };
    socket.setTimeout(1_000, done);
    socket.on('data', (chunk) => {
      received += chunk.toString('latin1');
      if (/^HTTP\/1\.[01] \d{3}/.test(received) && !received.startsWith('HTTP/1.1 100')) done();
      if (received.startsWith('HTTP/1.1 100') && received.includes('\r\n\r\n')) received = received.slice(received.indexOf('\r\n\r\n') + 4);
    });
    socket.on('error', done);
    socket.on('close', done);
    socket.write(request, 'latin1');
  });
}
