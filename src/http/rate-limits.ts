/**
 * Request limits for a public phone line, so that nobody but Twilio can spend
 * Twilio's allowance. Counters come from `@fastify/rate-limit` (its
 * `createRateLimit`, so the limits are separate); over one the answer is a 429
 * with `Retry-After`, which Twilio treats as a failed webhook, never a 5xx.
 *
 * - Unsigned traffic: every request that carries no proof of coming from Twilio
 *   (no `X-Twilio-Signature` header, no `sig` of an audio link) and every request
 *   to an unknown path (the admin console, scanners, 404s), counted in `onRequest`
 *   before the body is read, per client address first and then for the instance. A
 *   flood of it is refused cheaply and spends neither the signed budget nor another
 *   address's. Every route that exists checks what it carries: the webhooks and the
 *   ConversationRelay upgrade Twilio's signature, audio its own, the console its
 *   token (before any of this).
 * - Signed webhooks: counted in `preHandler` after the signature check, for the
 *   instance and per caller (keyed by the signed `From` number), so a forged
 *   request can neither spend Twilio's allowance nor a real caller's. Withheld
 *   numbers (Twilio's `+266696687` "ANONYMOUS" and friends) are not one caller:
 *   those calls are keyed by CallSid.
 * - A request that carries a signature is not counted before it is checked: an
 *   anonymous flood could otherwise lock Twilio out. A forged one costs one check,
 *   which the form limits keep well under a millisecond (src/http/twilio-form.ts).
 *   Audio links are signed by the service itself (src/speech/audio-url.ts) and
 *   exist only for answers it gave; a forged one is a 403 after one HMAC.
 *
 * The client address is the socket's: behind a proxy (Cloud Run's front end) it is
 * the proxy's, and unsigned traffic then shares one per-address counter, which only
 * makes that limit stricter; it never reaches the signed webhooks.
 *
 * Counters are per instance (in memory): with N instances the line takes up to N
 * times each limit, which is what they protect, one instance's CPU.
 *
 * @see https://github.com/fastify/fastify-rate-limit#createratelimit
 * @see https://www.twilio.com/docs/voice/twiml#request-parameters
 */
import rateLimit from '@fastify/rate-limit';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { throttledWarning } from '../logger.ts';

export interface RateLimits {
  /** Signed Twilio webhooks one caller number may make per minute. */
  perCallerPerMinute: number;
  /** Signed Twilio webhooks per second the instance takes. */
  signedPerSecond: number;
  /** Requests without a Twilio signature per second the instance takes (health checks not counted). */
  unsignedPerSecond: number;
  /** Requests without a Twilio signature per second from one client address. */
  unsignedPerAddressPerSecond: number;
}

/** Probes must see the truth during a flood, and cost nothing. */
const UNLIMITED_ROUTES = new Set(['/healthz', '/readyz']);
/** Caller IDs Twilio sends for withheld numbers: keypad spellings of ANONYMOUS, RESTRICTED, UNKNOWN, BLOCKED, UNAVAILABLE. */
const WITHHELD_NUMBERS = new Set(['+266696687', '+7378742833', '+8656696', '+2562533', '+86282452253', 'anonymous', 'restricted', 'unknown', 'blocked', 'unavailable', '']);
/** At most one warning per limit and second: a flood must not become a log flood. */
const WARN_EVERY_MS = 1_000;

type Verdict = Awaited<ReturnType<ReturnType<FastifyInstance['createRateLimit']>>>;

export const rateLimits = fp<RateLimits>(
  async (app, limits) => {
    await app.register(rateLimit, { global: false });
    const unsignedAddress = app.createRateLimit({ max: limits.unsignedPerAddressPerSecond, timeWindow: 1_000, keyGenerator: (request) => `unsigned:${request.ip}` });
    const unsignedInstance = app.createRateLimit({ max: limits.unsignedPerSecond, timeWindow: 1_000, keyGenerator: () => 'unsigned' });
    const signedInstance = app.createRateLimit({ max: limits.signedPerSecond, timeWindow: 1_000, keyGenerator: () => 'signed' });
    const caller = app.createRateLimit({ max: limits.perCallerPerMinute, timeWindow: 60_000, keyGenerator: callerKey });
    const refuseAddress = refusal('unsigned-address', 'too many unsigned requests from this address');
    const refuseUnsigned = refusal('unsigned', 'this service is taking too many unsigned requests');
    const refuseSigned = refusal('signed', 'this service is taking too many requests');
    const refuseCaller = refusal('caller', 'too many requests for this caller');

    app.addHook('onRequest', async (request, reply) => {
      if (UNLIMITED_ROUTES.has(request.routeOptions.url ?? '') || carriesTwilioProof(request)) return;
      if (refuseAddress(await unsignedAddress(request), request, reply)) return reply;
      if (refuseUnsigned(await unsignedInstance(request), request, reply)) return reply;
    });
    app.addHook('preHandler', async (request, reply) => {
      if (!request.routeOptions.config.twilioWebhook || reply.sent) return;
      if (refuseSigned(await signedInstance(request), request, reply)) return reply;
      if (refuseCaller(await caller(request), request, reply)) return reply;
    });
  },
  { name: 'rate-limits', fastify: '5.x' },
);

/**
 * A request to a route that exists, carrying Twilio's signature header (webhooks,
 * the ConversationRelay upgrade) or the service's own audio signature (`sig`): the
 * route checks it, so it is not counted as unsigned. An unknown path is checked by
 * nothing, so a signature on it counts for nothing.
 */
function carriesTwilioProof(request: FastifyRequest): boolean {
  if (request.routeOptions.url === undefined) return false;
  const query = request.query as Record<string, unknown> | undefined;
  return typeof request.headers['x-twilio-signature'] === 'string' || typeof query?.sig === 'string';
}

function callerKey(request: FastifyRequest): string {
  const body = (request.body ?? {}) as Record<string, unknown>;
  const from = typeof body.From === 'string' ? body.From.trim() : '';
  if (!WITHHELD_NUMBERS.has(from.toLowerCase())) return `from:${from}`;
  return typeof body.CallSid === 'string' ? `call:${body.CallSid}` : `ip:${request.ip}`;
}

/** Answers 429 when the verdict is over its limit (true: the request is answered). */
function refusal(limit: string, message: string) {
  const warn = throttledWarning(WARN_EVERY_MS, 'rate limit reached: answering 429');
  return (verdict: Verdict, request: FastifyRequest, reply: FastifyReply): boolean => {
    if (verdict.isAllowed || !verdict.isExceeded) return false;
    warn(request.log, { limit, max: verdict.max, path: request.url.split('?')[0] });
    void reply
      .code(429)
      .header('retry-after', String(verdict.ttlInSeconds))
      .type('text/plain')
      .send(`Too Many Requests: ${message}, retry in ${verdict.ttlInSeconds} s`);
    return true;
  };
}
