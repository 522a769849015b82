/**
 * The `<Gather>` transport's webhooks: each route translates Twilio's form into a
 * machine event (events.ts), hands it to the engine, and answers the engine's view
 * as TwiML (twiml.ts, or the ConversationRelay connect for a call whose replies are
 * streamed). The routes decide nothing about the conversation.
 *
 * The signature check is the app's one hook (`config.twilioWebhook`). Anything
 * failing inside a route is answered with the recovery TwiML (the machine's
 * `afterServiceFailure`), never a 5xx: this plugin has its own error handler.
 *
 * @see https://www.twilio.com/docs/voice/twiml#request-parameters
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { CallEngine, CallView, EngineAnswer } from '../../engine/call-engine.ts';
import {
  callSidOf,
  callStartOf,
  floorOf,
  playedEventOf,
  recoveredSpeechOf,
  serviceFailuresOf,
  speechEventOf,
  statusEventOf,
  WebhookInputError,
  type SpeechEvent,
  type TwilioForm,
} from './events.ts';
import { renderEmpty, renderRecovery, renderUnknownCall, ROUTES, type SayOptions } from './twiml.ts';
import type { ReplyDelivery } from '../../../machines/call.machine.ts';

export interface GatherRoutesOptions {
  engine: CallEngine;
  publicBaseUrl: string;
  /** The TwiML of a view (`<Gather>` and friends; the relay connect for a streamed call). */
  render(view: CallView): string;
  /** How a new call's replies reach the caller: `pieces` over `<Gather>`, `streamed` over ConversationRelay. */
  replyDelivery: ReplyDelivery;
  /** Longest a webhook waits for the engine before answering the recovery TwiML (Twilio gives up at 15 s). */
  answerBudgetMs: number;
  say: SayOptions;
  now(): number;
}

const TWIML = 'text/xml; charset=utf-8';

/** A webhook answered at its budget while its work goes on. */
class AnswerBudgetExceeded extends Error {
  override readonly name = 'AnswerBudgetExceeded';
}

export async function gatherRoutes(app: FastifyInstance, options: GatherRoutesOptions): Promise<void> {
  const { engine, now } = options;
  /** The caller's words on each `/speech-result`, for the recovery TwiML if the request fails. */
  const callerWords = new WeakMap<FastifyRequest, SpeechEvent>();
  /** Each `/continue` that reports a reply's first pieces played (PLAYED), likewise. */
  const played = new WeakSet<FastifyRequest>();
  const { say } = options;

  app.setErrorHandler((error: Error & { statusCode?: number }, request, reply) => {
    if (error instanceof WebhookInputError) return reply.code(400).type('text/plain').send(`Bad Request: ${error.message}`);
    const status = error.statusCode ?? 500;
    if (status < 500) return reply.code(status).type('text/plain').send(error.message);
    request.log.error({ err: error, path: request.url.split('?')[0] }, 'request failed');
    // Keep the caller on the line and try again. The caller's words always go back
    // with the retry: past the answer budget the work goes on with them, but it may
    // still fail before it takes the turn, and the engine knows a turn that already
    // took them. A PLAYED goes back only if it never started (within the budget).
    const untaken = !(error instanceof AnswerBudgetExceeded);
    const failures = serviceFailuresOf(query(request)) + 1;
    const recovery = renderRecovery(failures, { baseUrl: options.publicBaseUrl, ...say }, callerWords.get(request), untaken && played.has(request));
    return reply.code(200).type(TWIML).send(recovery);
  });

  const webhook = { config: { twilioWebhook: true } };

  app.post(ROUTES.voice, webhook, async (request, reply) => {
    const call = { ...callStartOf(form(request)), replyDelivery: options.replyDelivery };
    return send(reply, await withinBudget(engine.start(call, stepRequest(request)), request));
  });

  app.post(ROUTES.speechResult, webhook, async (request, reply) => {
    const body = form(request);
    const callSid = callSidOf(body);
    const recovered = recoveredSpeechOf(query(request));
    const event = recovered ?? speechEventOf(body, now());
    if (event.type === 'SPEECH') callerWords.set(request, event);
    // A recovery redirect carries words already checked against the turns; a plain result answers one floor.
    const floor = recovered ? undefined : floorOf(query(request));
    const work = engine.handle(callSid, event, { ...stepRequest(request), floor });
    return send(reply, await withinBudget(work, request));
  });

  app.post(ROUTES.continue, webhook, async (request, reply) => {
    const callSid = callSidOf(form(request));
    const event = playedEventOf(query(request), now());
    if (event) played.add(request);
    return send(reply, await withinBudget(engine.handle(callSid, event, stepRequest(request)), request));
  });

  app.post(ROUTES.callStatus, webhook, async (request, reply) => {
    const body = form(request);
    const callSid = callSidOf(body);
    const event = statusEventOf(body, now());
    if (event) {
      const answer = await engine.handle(callSid, event, stepRequest(request));
      if (answer.kind === 'unknown') request.log.debug({ callSid }, 'status for a call this service does not know');
      else request.log.info({ callSid, status: event.status }, 'call ended');
    }
    return reply.type(TWIML).send(renderEmpty());
  });

  /** Twilio repeats I-Twilio-Idempotency-Token on retries of one webhook. */
  function stepRequest(request: FastifyRequest) {
    const token = request.headers['i-twilio-idempotency-token'];
    const key = typeof token === 'string' && /^[\w.:-]{1,128}$/.test(token) ? `${request.routeOptions.url}|${token}` : undefined;
    return { key, render: options.render };
  }

  function send(reply: FastifyReply, answer: EngineAnswer) {
    reply.type(TWIML);
    if (answer.kind === 'unknown') return reply.send(renderUnknownCall(say));
    return reply.send(answer.kind === 'replay' ? answer.body : (answer.body ?? options.render(answer.view)));
  }

  /**
   * A slow store (or anything else) must not make Twilio give up on the call: past
   * the budget the error handler answers the recovery TwiML, and the work goes on
   * for the `/continue` that follows to pick up.
   */
  async function withinBudget<T>(work: Promise<T>, request: FastifyRequest): Promise<T> {
    const budgetMs = options.answerBudgetMs;
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
}

export function isForm(body: unknown): body is TwilioForm {
  return typeof body === 'object' && body !== null && !Array.isArray(body);
}

function form(request: FastifyRequest): TwilioForm {
  if (!isForm(request.body)) throw new WebhookInputError('expected an application/x-www-form-urlencoded body');
  return request.body;
}

function query(request: FastifyRequest): TwilioForm {
  return isForm(request.query) ? request.query : {};
}
