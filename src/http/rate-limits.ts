/**
 * Request limits for a public phone line: one for the whole instance, one per
 * caller. Counters come from `@fastify/rate-limit` (its `createRateLimit`, so the
 * two limits are separate and both apply); over either one the answer is a 429
 * with `Retry-After`, which Twilio treats as a failed webhook, never a 5xx.
 *
 * - Instance: every request but the health checks, counted in `onRequest`,
 *   before the body is read, so a flood costs as little as possible.
 * - Caller: Twilio webhooks only, counted in `preHandler` after the signature
 *   check, keyed by the signed `From` number. The body is parsed by then, and only
 *   signed requests count, so a forged request can neither spend a real caller's
 *   allowance nor lock them out. Withheld numbers (Twilio's `+266696687`
 *   "ANONYMOUS" and friends) are not one caller: those calls are keyed by CallSid.
 *
 * Counters are per instance (in memory): with N instances the line takes up to N
 * times the global limit, which is what the limit protects, one instance's CPU.
 *
 * @see https://github.com/fastify/fastify-rate-limit#createratelimit
 * @see https://www.twilio.com/docs/voice/twiml#request-parameters
 */
import rateLimit from '@fastify/rate-limit';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';

export interface RateLimits {
  /** Signed Twilio webhooks one caller number may make per minute. */
  perCallerPerMinute: number;
  /** Requests per second the instance takes (health checks not counted). */
  globalPerSecond: number;
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
    const instance = app.createRateLimit({ max: limits.globalPerSecond, timeWindow: 1_000, keyGenerator: () => 'instance' });
    const caller = app.createRateLimit({ max: limits.perCallerPerMinute, timeWindow: 60_000, keyGenerator: callerKey });
    const refuseInstance = refusal('instance', 'this service is taking too many requests');
    const refuseCaller = refusal('caller', 'too many requests for this caller');

    app.addHook('onRequest', async (request, reply) => {
      if (UNLIMITED_ROUTES.has(request.routeOptions.url ?? '')) return;
      return refuseInstance(await instance(request), request, reply);
    });
    app.addHook('preHandler', async (request, reply) => {
      if (!request.routeOptions.config.twilioWebhook || reply.sent) return;
      return refuseCaller(await caller(request), request, reply);
    });
  },
  { name: 'rate-limits', fastify: '5.x' },
);

function callerKey(request: FastifyRequest): string {
  const body = (request.body ?? {}) as Record<string, unknown>;
  const from = typeof body.From === 'string' ? body.From.trim() : '';
  if (!WITHHELD_NUMBERS.has(from.toLowerCase())) return `from:${from}`;
  return typeof body.CallSid === 'string' ? `call:${body.CallSid}` : `ip:${request.ip}`;
}

function refusal(limit: 'instance' | 'caller', message: string) {
  let lastWarnedAt = 0;
  let refusedSince = 0;
  return (verdict: Verdict, request: FastifyRequest, reply: FastifyReply) => {
    if (verdict.isAllowed || !verdict.isExceeded) return;
    refusedSince += 1;
    const now = Date.now();
    if (now - lastWarnedAt >= WARN_EVERY_MS) {
      request.log.warn({ limit, max: verdict.max, refused: refusedSince, path: request.url.split('?')[0] }, 'rate limit reached: answering 429');
      lastWarnedAt = now;
      refusedSince = 0;
    }
    return reply
      .code(429)
      .header('retry-after', String(verdict.ttlInSeconds))
      .type('text/plain')
      .send(`Too Many Requests: ${message}, retry in ${verdict.ttlInSeconds} s`);
  };
}
