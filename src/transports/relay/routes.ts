/**
 * The ConversationRelay transport's routes:
 *
 * - `GET /relay`, the WebSocket Twilio opens for a call whose `/voice` answered
 *   `<Connect><ConversationRelay>`. The upgrade's `X-Twilio-Signature` is checked
 *   before upgrading (upgrade-signature.ts); a forged or missing one is a 403 and
 *   no socket. Each socket is a RelaySession.
 * - `POST /relay-ended`, the `<Connect action>`: Twilio requests it when the
 *   session ends, signed like any webhook. If the call was ending (the session
 *   sent `end`), its TwiML says the closing line and hangs up. If not, the socket
 *   dropped or an instance died mid-call: RECONNECTED, and the answer is a new
 *   `<Connect><ConversationRelay>` that resumes the same call, history and all,
 *   on whichever instance the socket reaches. While another instance still holds
 *   the turn (the one that died with the socket, until its lease lapses), the
 *   caller waits and Twilio is sent back here, RECONNECTED still to apply.
 *
 * @see https://www.twilio.com/docs/voice/twiml/connect/conversationrelay
 */
import websocket from '@fastify/websocket';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { CallEngine, CallView } from '../../engine/call-engine.ts';
import { callSidOf, WebhookInputError, type TwilioForm } from '../gather/events.ts';
import { isForm } from '../gather/routes.ts';
import { renderRecovery, renderUnknownCall, type SayOptions } from '../gather/twiml.ts';
import { MAX_RELAY_FRAME_BYTES } from './messages.ts';
import { RelaySession, type RelaySessions } from './relay-session.ts';
import { verifyRelayUpgrade } from './upgrade-signature.ts';
import { RELAY_ROUTES, renderResumeWait, socketBaseUrl } from './webhook-twiml.ts';

export interface RelayRoutesOptions {
  engine: CallEngine;
  sessions: RelaySessions;
  publicBaseUrl: string;
  twilioAuthToken: string;
  /** The TwiML of a call's state (for a streamed call's `listening`: the relay connect). */
  render(view: CallView): string;
  /** How long the caller waits for the agent's first words before the machine hears the turn is slow. */
  slowAfterMs: number;
  say: SayOptions;
  log: Logger;
  now(): number;
}

const TWIML = 'text/xml; charset=utf-8';
/** Words Twilio uses for the state of the session that ended; anything else is logged as sent, bounded. */
const SESSION_STATUS = /^[a-z-]{1,32}$/;

export async function relayRoutes(app: FastifyInstance, options: RelayRoutesOptions): Promise<void> {
  const { engine, sessions } = options;
  // Twilio's frames are small; past this `ws` closes the socket, so it stays above what messages.ts refuses and logs.
  await app.register(websocket, { options: { maxPayload: MAX_RELAY_FRAME_BYTES * 4 } });
  const { say } = options;

  // The action URL is a webhook: bad input is a 400, anything failing inside keeps the caller on the line.
  app.setErrorHandler((error: Error & { statusCode?: number }, request, reply) => {
    if (error instanceof WebhookInputError) return reply.code(400).type('text/plain').send(`Bad Request: ${error.message}`);
    if ((error.statusCode ?? 500) < 500) return reply.code(error.statusCode!).type('text/plain').send(error.message);
    request.log.error({ err: error, path: request.url.split('?')[0] }, 'request failed');
    return reply.code(200).type(TWIML).send(renderRecovery(1, { baseUrl: options.publicBaseUrl, ...say }));
  });

  const wssBase = socketBaseUrl(options.publicBaseUrl);
  app.get(
    RELAY_ROUTES.socket,
    {
      websocket: true,
      preValidation: async (request, reply) => {
        if (!verifyRelayUpgrade(options.twilioAuthToken, wssBase + request.url, request.headers)) {
          request.log.warn({ path: RELAY_ROUTES.socket }, 'refused a ConversationRelay upgrade with a missing or wrong Twilio signature');
          return reply.code(403).type('text/plain').send('Forbidden: invalid Twilio signature');
        }
      },
    },
    (socket) => {
      new RelaySession(socket, { engine, sessions, log: options.log, now: options.now, slowAfterMs: options.slowAfterMs });
    },
  );

  app.post(RELAY_ROUTES.ended, { config: { twilioWebhook: true } }, async (request, reply) => {
    if (!isForm(request.body)) throw new WebhookInputError('expected an application/x-www-form-urlencoded body');
    const body: TwilioForm = request.body;
    const callSid = callSidOf(body);
    const status = typeof body.SessionStatus === 'string' && SESSION_STATUS.test(body.SessionStatus) ? body.SessionStatus : undefined;
    // RECONNECTED is the step itself: a call that was ending (its session sent `end`) ignores it and
    // renders its closing line. Looking first would adopt a turn left by an instance that died with
    // the socket, and ask the agent again for an answer no socket will carry, before RECONNECTED drops it.
    const resumed = await engine.handle(callSid, { type: 'RECONNECTED', at: options.now() }, { render: options.render });
    reply.type(TWIML);
    if (resumed.kind === 'unknown') return reply.send(renderUnknownCall(say));
    if (resumed.kind === 'answer' && resumed.view.state !== 'terminating' && resumed.view.state !== 'ended') {
      request.log.warn({ callSid, sessionStatus: status, errorCode: typeof body.ErrorCode === 'string' ? body.ErrorCode.slice(0, 16) : undefined }, 'the ConversationRelay session ended mid-call; resuming the call');
    }
    if (resumed.kind === 'answer' && resumed.view.pending) return reply.send(renderResumeWait(resumed.view, options.publicBaseUrl, say));
    return reply.send(resumed.kind === 'replay' ? resumed.body : (resumed.body ?? options.render(resumed.view)));
  });
}
