/**
 * The HTTP surface: Twilio's webhooks, the signed audio route and health checks.
 * Routes only translate: form body → machine event (src/twilio/events.ts), engine
 * view → TwiML (src/twilio/twiml.ts). The app never listens; src/server.ts does.
 *
 * Every Twilio webhook passes one hook that checks `X-Twilio-Signature` over the
 * public URL (twilio's own `validateRequest`); a missing or wrong signature is a
 * 403 before anything is read or stored. A webhook never answers 5xx: bad input is
 * a 400, anything failing inside is TwiML that keeps the caller on the line.
 *
 * @see https://www.twilio.com/docs/usage/webhooks/webhooks-security
 */
import { createHash } from 'node:crypto';
import formbody from '@fastify/formbody';
import Fastify, { LogController, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { validateRequest } from 'twilio/lib/webhooks/webhooks.js';
import { PHRASES, type PhraseName } from '../../machines/call.machine.ts';
import { adminRoutes } from '../admin/admin-routes.ts';
import type { CallEngine, EngineAnswer } from '../engine/call-engine.ts';
import { replyAudioId } from '../engine/call-engine.ts';
import type { AudioUrlSigner } from '../speech/audio-url.ts';
import { textAround } from '../speech/speakable-pieces.ts';
import type { SpeechRequest, SynthesisedAudio } from '../speech/speech.ts';
import type { VoiceLibrary } from '../speech/voice-library.ts';
import type { CallStore } from '../store/call-store.ts';
import {
  callSidOf,
  callStartOf,
  recoveredSpeechOf,
  continueEventOf,
  speechEventOf,
  statusEventOf,
  WebhookInputError,
  type SpeechEvent,
  type TwilioForm,
} from '../twilio/events.ts';
import { renderEmpty, renderRecovery, renderUnknownCall, ROUTES } from '../twilio/twiml.ts';
import { rateLimits, type RateLimits } from './rate-limits.ts';

export interface AppOptions {
  engine: CallEngine;
  store: CallStore;
  voice: VoiceLibrary | undefined;
  audioUrls: AudioUrlSigner;
  publicBaseUrl: string;
  twilioAuthToken: string;
  audioUrlTtlSec: number;
  /** Per-caller and per-instance request limits (429 beyond); absent, nothing is limited. */
  rateLimits?: RateLimits;
  /** Longest a webhook waits for the engine before answering the recovery TwiML (Twilio gives up at 15 s). */
  answerBudgetMs?: number;
  log: Logger;
  now?: () => number;
  sayVoice?: string;
  sayLanguage?: string;
  /** Largest request body accepted, bytes (Twilio's forms are a few KB). */
  bodyLimit?: number;
  /** Bearer token for /admin; undefined turns the admin console off. */
  adminToken?: string | undefined;
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Marks a route Twilio calls: signature-checked, answered with TwiML. */
    twilioWebhook?: boolean;
  }
}

const TWIML = 'text/xml; charset=utf-8';
/** Twilio waits about 15 s for TwiML; leave room for the network and a retry. */
const DEFAULT_ANSWER_BUDGET_MS = 10_000;

/** A webhook answered at its budget while its work goes on. */
class AnswerBudgetExceeded extends Error {
  override readonly name = 'AnswerBudgetExceeded';
}

export function buildApp(options: AppOptions) {
  const now = options.now ?? Date.now;
  const app = Fastify({
    loggerInstance: options.log,
    bodyLimit: options.bodyLimit ?? 64 * 1024,
    // Per-request lines would dominate the log at call volume; calls log what matters.
    logController: new LogController({ disableRequestLogging: true }),
    // A request reaching an open connection during the SIGTERM drain is served (a
    // 503 would be a 5xx to Twilio; the store stays open until the drain ends),
    // and Fastify closes that connection after it (`Connection: close`).
    return503OnClosing: false,
  });

  /** The caller's words on each `/speech-result`, for the recovery TwiML if the request fails. */
  const callerWords = new WeakMap<FastifyRequest, SpeechEvent>();
  /** Each `/continue` that asks for the rest of a reply (CONTINUE), likewise. */
  const continuing = new WeakSet<FastifyRequest>();

  app.register(formbody);
  app.register(adminRoutes, { prefix: '/admin', store: options.store, adminToken: options.adminToken, now });

  app.addHook('preHandler', async (request, reply) => {
    if (!request.routeOptions.config.twilioWebhook) return;
    const signature = request.headers['x-twilio-signature'];
    const params = isForm(request.body) ? request.body : {};
    const url = options.publicBaseUrl + request.url;
    if (typeof signature !== 'string' || !validateRequest(options.twilioAuthToken, signature, url, params)) {
      request.log.warn({ path: request.url.split('?')[0] }, 'rejected a webhook with a missing or wrong Twilio signature');
      return reply.code(403).type('text/plain').send('Forbidden: invalid Twilio signature');
    }
  });
  // After the signature hook: only signed requests count against a caller.
  if (options.rateLimits) app.register(rateLimits, options.rateLimits);

  // A keep-alive connection whose request is in flight at close() would hold the
  // close open until it idles out (SIGTERM would time out): end it with its answer.
  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
  });
  app.addHook('onSend', async (_request, reply) => {
    if (closing) reply.header('connection', 'close');
  });

  app.setErrorHandler((error: Error & { statusCode?: number }, request, reply) => {
    if (error instanceof WebhookInputError) {
      return reply.code(400).type('text/plain').send(`Bad Request: ${error.message}`);
    }
    const status = error.statusCode ?? 500;
    if (status < 500) {
      return reply.code(status).type('text/plain').send(error.message);
    }
    request.log.error({ err: error, path: request.url.split('?')[0] }, 'request failed');
    if (request.routeOptions.config?.twilioWebhook) {
      // Keep the caller on the line and try again. The caller's words always go back
      // with the retry: past the answer budget the work goes on with them, but it may
      // still fail before it takes the turn, and the engine knows a turn that already
      // took them. A CONTINUE goes back only if it never started (within the budget).
      const untaken = !(error instanceof AnswerBudgetExceeded);
      const words = callerWords.get(request);
      const recovery = renderRecovery(recoveryAttempt(request), { baseUrl: options.publicBaseUrl, ...sayVoice(options) }, words, untaken && continuing.has(request));
      return reply.code(200).type(TWIML).send(recovery);
    }
    return reply.code(500).type('text/plain').send('Internal Server Error');
  });

  const webhook = { config: { twilioWebhook: true } };

  app.post(ROUTES.voice, webhook, async (request, reply) => {
    const call = callStartOf(form(request));
    return sendAnswer(reply, await withinBudget(options.engine.start(call, requestMeta(request)), request), options);
  });

  app.post(ROUTES.speechResult, webhook, async (request, reply) => {
    const body = form(request);
    const callSid = callSidOf(body);
    const recovered = recoveredSpeechOf(isForm(request.query) ? request.query : {});
    const event = recovered ?? speechEventOf(body, now());
    if (event.type === 'SPEECH') callerWords.set(request, event);
    const work = options.engine.handle(callSid, event, requestMeta(request));
    return sendAnswer(reply, await withinBudget(work, request), options);
  });

  app.post(ROUTES.continue, webhook, async (request, reply) => {
    const callSid = callSidOf(form(request));
    const event = continueEventOf(isForm(request.query) ? request.query : {}, now());
    if (event) continuing.add(request);
    return sendAnswer(reply, await withinBudget(options.engine.handle(callSid, event, requestMeta(request)), request), options);
  });

  app.post(ROUTES.callStatus, webhook, async (request, reply) => {
    const body = form(request);
    const callSid = callSidOf(body);
    const event = statusEventOf(body, now());
    if (event) {
      const answer = await options.engine.handle(callSid, event, requestMeta(request));
      if (answer.kind === 'unknown') request.log.debug({ callSid }, 'status for a call this service does not know');
      else request.log.child({ callSid }).info({ status: event.status }, 'call ended');
    }
    return reply.type(TWIML).send(renderEmpty());
  });

  app.get<{ Params: { name: string }; Querystring: AudioQuery }>('/audio/phrase/:name', async (request, reply) => {
    const path = `/audio/phrase/${request.params.name}`;
    if (!checkAudioSignature(request, reply, path)) return reply;
    const name = request.params.name;
    if (!options.voice || !Object.hasOwn(PHRASES, name)) return reply.code(404).send('Not Found');
    return sendAudio(reply, () => options.voice!.phrase(name, PHRASES[name as PhraseName]), options.audioUrlTtlSec);
  });

  app.get<{ Params: { callSid: string; key: string }; Querystring: AudioQuery }>(
    '/audio/call/:callSid/:key',
    async (request, reply) => {
      const { callSid, key } = request.params;
      const path = `/audio/call/${callSid}/${key}`;
      if (!checkAudioSignature(request, reply, path)) return reply;
      const voice = options.voice;
      // Usually this instance voiced it moments ago: no store read needed.
      const ready = voice?.replyIfReady(replyAudioId(callSid, key));
      if (ready) return sendAudio(reply, () => Promise.resolve(ready), options.audioUrlTtlSec);
      const stored = voice ? await options.store.load(callSid) : null;
      const spoken = stored ? spokenText(stored.record.turns, key) : undefined;
      if (!voice || !spoken) return reply.code(404).send('Not Found');
      return sendAudio(reply, () => voice.replyPiece(replyAudioId(callSid, key), spoken), options.audioUrlTtlSec);
    },
  );

  app.get('/healthz', async () => ({ status: 'ok' }));

  app.get('/readyz', async (_request, reply) => {
    // A store whose health check throws is just as unavailable.
    const healthy = await options.store.healthy().catch(() => false);
    return reply.code(healthy ? 200 : 503).send({ status: healthy ? 'ready' : 'store unavailable', store: options.store.kind });
  });

  /**
   * A slow store (or anything else) must not make Twilio give up on the call: past
   * the budget the error handler answers the recovery TwiML, and the work goes on
   * for the `/continue` that follows to pick up.
   */
  async function withinBudget<T>(work: Promise<T>, request: FastifyRequest): Promise<T> {
    const budgetMs = options.answerBudgetMs ?? DEFAULT_ANSWER_BUDGET_MS;
    let timer: NodeJS.Timeout | undefined;
    // The error (and its stack) is made only when the budget runs out, not for every webhook.
    const deadline = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new AnswerBudgetExceeded(`no answer within the ${budgetMs} ms webhook budget`)), budgetMs);
    });
    try {
      return await Promise.race([work, deadline]);
    } catch (error) {
      if (error instanceof AnswerBudgetExceeded) work.catch((late: unknown) => request.log.error({ err: late }, 'a webhook failed after its answer budget'));
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  function checkAudioSignature(request: FastifyRequest<{ Querystring: AudioQuery }>, reply: FastifyReply, path: string) {
    const verdict = options.audioUrls.verify(path, str(request.query.exp), str(request.query.sig));
    if (verdict === 'ok') return true;
    void reply.code(403).type('text/plain').send(verdict === 'expired' ? 'Forbidden: audio link expired' : 'Forbidden: invalid audio link');
    return false;
  }

  return app;
}

interface AudioQuery {
  exp?: unknown;
  sig?: unknown;
}

function str(value: unknown): string | undefined {
  return typeof value === 'string' ? value : undefined;
}

function isForm(body: unknown): body is TwilioForm {
  return typeof body === 'object' && body !== null && !Array.isArray(body);
}

function form(request: FastifyRequest): TwilioForm {
  if (!isForm(request.body)) throw new WebhookInputError('expected an application/x-www-form-urlencoded body');
  return request.body;
}

/** Twilio repeats I-Twilio-Idempotency-Token on retries of one webhook. */
function requestMeta(request: FastifyRequest) {
  const token = request.headers['i-twilio-idempotency-token'];
  const key = typeof token === 'string' && /^[\w.:-]{1,128}$/.test(token) ? `${request.routeOptions.url}|${token}` : undefined;
  return { key };
}

function recoveryAttempt(request: FastifyRequest): number {
  const attempt = Number((request.query as Record<string, unknown> | undefined)?.attempt);
  return Number.isInteger(attempt) && attempt > 0 && attempt < 10 ? attempt : 0;
}

function sayVoice(options: AppOptions) {
  return { sayVoice: options.sayVoice, sayLanguage: options.sayLanguage };
}

function sendAnswer(reply: FastifyReply, answer: EngineAnswer, options: AppOptions) {
  reply.type(TWIML);
  if (answer.kind === 'unknown') return reply.send(renderUnknownCall(sayVoice(options)));
  return reply.send(answer.body);
}

/**
 * What a reply audio key speaks: `t<turn>` is that turn's agent reply, or its first
 * piece when it was voiced in pieces; `t<turn>p<n>` its n-th piece after that.
 */
function spokenText(
  turns: Array<{ index: number; reply?: string; pieces?: string[] }>,
  key: string,
): SpeechRequest | undefined {
  const match = /^t(\d{1,6})(?:p([1-9]\d{0,3}))?$/.exec(key);
  const turn = match ? turns[Number(match[1])] : undefined;
  const piece = Number(match?.[2] ?? 0);
  const text = turn?.pieces ? turn.pieces[piece] : piece === 0 ? turn?.reply : undefined;
  return turn && text ? { text, ...(turn.pieces ? textAround(turn.pieces, piece) : {}) } : undefined;
}

/** Audio is cached and fetched again (by Twilio, by other pieces): hash it once. */
const etags = new WeakMap<SynthesisedAudio, string>();
function etagOf(audio: SynthesisedAudio): string {
  let etag = etags.get(audio);
  if (etag === undefined) {
    etag = `"${createHash('sha256').update(audio.bytes).digest('base64url').slice(0, 27)}"`;
    etags.set(audio, etag);
  }
  return etag;
}

/**
 * Serves synthesised audio only once it is complete and known good: an error body
 * from the speech service is never sent to Twilio as audio.
 */
async function sendAudio(reply: FastifyReply, synthesise: () => Promise<SynthesisedAudio>, ttlSec: number) {
  let audio: SynthesisedAudio;
  try {
    audio = await synthesise();
  } catch (error) {
    reply.log.warn({ err: error }, 'audio could not be synthesised');
    return reply.code(502).type('text/plain').send('Bad Gateway: speech synthesis failed');
  }
  const etag = etagOf(audio);
  if (reply.request.headers['if-none-match'] === etag) return reply.code(304).send();
  return reply
    .header('content-type', audio.contentType)
    .header('cache-control', `private, max-age=${ttlSec}`)
    .header('etag', etag)
    .send(audio.bytes);
}
export type App = ReturnType<typeof buildApp>;
