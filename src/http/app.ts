/**
 * The HTTP surface, assembled: Twilio's webhooks (the `<Gather>` transport,
 * src/transports/gather/routes.ts), the ConversationRelay socket and its action
 * URL (src/transports/relay/routes.ts), the signed audio route, the admin console and
 * health checks. The app never listens; src/server.ts does.
 *
 * Every Twilio webhook passes one hook that checks `X-Twilio-Signature` over the
 * public URL (twilio's own `validateRequest`); a missing or wrong signature is a
 * 403 before anything is read or stored, and a form no Twilio webhook would send
 * (too many parameters, too large) a 413 before the signature is even computed
 * (src/http/twilio-form.ts). A webhook never answers 5xx: bad input is a 400,
 * anything failing inside is TwiML that keeps the caller on the line.
 *
 * @see https://www.twilio.com/docs/usage/webhooks/webhooks-security
 */
import formbody from '@fastify/formbody';
import Fastify, { LogController } from 'fastify';
import type { Logger } from 'pino';
import { validateRequest } from 'twilio/lib/webhooks/webhooks.js';
import type { ReplyDelivery } from '../../machines/call.machine.ts';
import { adminRoutes } from '../admin/admin-routes.ts';
import type { CallEngine, CallView } from '../engine/call-engine.ts';
import type { AudioUrlSigner } from '../speech/audio-url.ts';
import type { VoiceLibrary } from '../speech/voice-library.ts';
import type { CallStore } from '../store/call-store.ts';
import { WebhookInputError } from '../transports/gather/events.ts';
import { gatherRoutes, isForm } from '../transports/gather/routes.ts';
import type { SayOptions } from '../transports/gather/twiml.ts';
import type { RelaySessions } from '../transports/relay/relay-session.ts';
import { relayRoutes } from '../transports/relay/routes.ts';
import { throttledWarning } from '../logger.ts';
import { audioRoutes } from './audio-routes.ts';
import { rateLimits, type RateLimits } from './rate-limits.ts';
import { MAX_FORM_BYTES, parseTwilioForm } from './twilio-form.ts';

export interface AppOptions {
  engine: CallEngine;
  /** The TwiML of a call's state. */
  render(view: CallView): string;
  /** How a new call's replies reach the caller (`streamed`: over ConversationRelay). */
  replyDelivery?: ReplyDelivery;
  /** The ConversationRelay sockets of this process (the relay routes add to it). */
  relaySessions: RelaySessions;
  /** How long a relay caller waits for the agent's first words before the machine hears the turn is slow; default 3 s. */
  webhookDeadlineMs?: number;
  store: CallStore;
  voice: VoiceLibrary | undefined;
  audioUrls: AudioUrlSigner;
  publicBaseUrl: string;
  twilioAuthToken: string;
  audioUrlTtlSec: number;
  /** Request limits for signed and unsigned traffic (429 beyond); absent, nothing is limited. */
  rateLimits?: RateLimits;
  /** Longest a webhook waits for the engine before answering the recovery TwiML (Twilio gives up at 15 s). */
  answerBudgetMs?: number;
  log: Logger;
  now?: () => number;
  /** Voice and language of `<Say>` (SAY_VOICE, SAY_LANGUAGE); Twilio's defaults when absent. */
  sayVoice?: string | undefined;
  sayLanguage?: string | undefined;
  /** Bearer token for /admin; undefined turns the admin console off. */
  adminToken?: string | undefined;
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Marks a route Twilio calls: signature-checked, answered with TwiML. */
    twilioWebhook?: boolean;
  }
}

/** Twilio waits about 15 s for TwiML; leave room for the network and a retry. */
const DEFAULT_ANSWER_BUDGET_MS = 10_000;

/**
 * Socket timeouts for Twilio's requests, which are a few KB sent at once (on Cloud
 * Run, relayed by its front end). Without them a client sending its headers or
 * body a byte at a time held a socket for good (Fastify's `requestTimeout` was 0).
 * - `headersTimeout`, `requestTimeout`: the whole request, headers and body, must
 *   arrive within 5 s (Twilio's take milliseconds), or Node answers 408 and closes.
 *   Node checks every `connectionsCheckingInterval`, so the bound holds within 1 s.
 * - `connectionTimeout`: a request's socket may be silent 30 s, longer than any
 *   webhook waits for its answer (the answer budget is at most 14 s), so it only
 *   ends sockets whose client stopped reading. An upgraded socket (ConversationRelay)
 *   is the WebSocket's: `ws` turns the timeout off.
 * - `keepAliveTimeout`: an idle kept-alive connection stays 72 s (Fastify's
 *   default, chosen to outlast the 60 s idle timeout common to load balancers), so
 *   the proxy in front closes it first and never sends a request on a connection
 *   the service is closing.
 *
 * @see https://nodejs.org/api/http.html#serverrequesttimeout
 * @see https://nodejs.org/api/http.html#httpcreateserveroptions-requestlistener
 * @see https://fastify.dev/docs/latest/Reference/Server/#requesttimeout
 */
const HTTP_TIMEOUTS = {
  connectionTimeout: 30_000,
  keepAliveTimeout: 72_000,
  requestTimeout: 5_000,
  http: { headersTimeout: 5_000, requestTimeout: 5_000, connectionsCheckingInterval: 1_000 },
};

/** One line a second about forged webhooks, however many come (each costs a signature check, not a log line). */
const FORGED_WARNING_EVERY_MS = 1_000;

export function buildApp(options: AppOptions) {
  const now = options.now ?? Date.now;
  const app = Fastify({
    loggerInstance: options.log,
    bodyLimit: MAX_FORM_BYTES,
    ...HTTP_TIMEOUTS,
    // Per-request lines would dominate the log at call volume; calls log what matters.
    logController: new LogController({ disableRequestLogging: true }),
    // A request reaching an open connection during the SIGTERM drain is served (a
    // 503 would be a 5xx to Twilio; the store stays open until the drain ends),
    // and Fastify closes that connection after it (`Connection: close`).
    return503OnClosing: false,
  });

  app.register(formbody, { parser: parseTwilioForm });
  app.register(adminRoutes, { prefix: '/admin', store: options.store, adminToken: options.adminToken, now });

  const warnForged = throttledWarning(FORGED_WARNING_EVERY_MS, 'rejected a webhook with a missing or wrong Twilio signature');
  app.addHook('preHandler', async (request, reply) => {
    if (!request.routeOptions.config.twilioWebhook) return;
    const signature = request.headers['x-twilio-signature'];
    const params = isForm(request.body) ? request.body : {};
    const url = options.publicBaseUrl + request.url;
    if (typeof signature !== 'string' || !validateRequest(options.twilioAuthToken, signature, url, params)) {
      warnForged(request.log, { path: request.url.split('?')[0] });
      return reply.code(403).type('text/plain').send('Forbidden: invalid Twilio signature');
    }
  });
  // After the signature hook: only signed requests count against Twilio's and a caller's budget.
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
    return reply.code(500).type('text/plain').send('Internal Server Error');
  });

  app.register(gatherRoutes, {
    engine: options.engine,
    publicBaseUrl: options.publicBaseUrl,
    render: options.render,
    replyDelivery: options.replyDelivery ?? 'pieces',
    answerBudgetMs: options.answerBudgetMs ?? DEFAULT_ANSWER_BUDGET_MS,
    say: sayOf(options),
    now,
  });
  app.register(relayRoutes, {
    engine: options.engine,
    sessions: options.relaySessions,
    publicBaseUrl: options.publicBaseUrl,
    twilioAuthToken: options.twilioAuthToken,
    render: options.render,
    slowAfterMs: options.webhookDeadlineMs ?? 3_000,
    say: sayOf(options),
    log: options.log,
    now,
  });
  app.register(audioRoutes, { store: options.store, voice: options.voice, audioUrls: options.audioUrls, audioUrlTtlSec: options.audioUrlTtlSec });

  app.get('/healthz', async () => ({ status: 'ok' }));

  app.get('/readyz', async (_request, reply) => {
    // A store whose health check throws is just as unavailable.
    const healthy = await options.store.healthy().catch(() => false);
    return reply.code(healthy ? 200 : 503).send({ status: healthy ? 'ready' : 'store unavailable', store: options.store.kind });
  });

  return app;
}

/** The `<Say>` settings, without absent ones. */
function sayOf(options: AppOptions): SayOptions {
  const say: SayOptions = {};
  if (options.sayVoice) say.sayVoice = options.sayVoice;
  if (options.sayLanguage) say.sayLanguage = options.sayLanguage;
  return say;
}

export type App = ReturnType<typeof buildApp>;
