/**
 * The TwiML of a call whose replies are streamed over ConversationRelay: when
 * the machine listens, Twilio is connected (again) to the relay socket, with the
 * prompt the caller hears first (the greeting, or "we were cut off") as the
 * session's welcome greeting. Every other state renders as for `<Gather>`: a wait
 * is the machine's filler, the closing line is said with `<Hangup/>`. One wait is
 * the relay's own: the action URL could not resume the call yet (`renderResumeWait`).
 *
 * @see https://www.twilio.com/docs/voice/twiml/connect/conversationrelay
 * @see https://www.twilio.com/docs/voice/twiml/redirect
 */
import VoiceResponse from 'twilio/lib/twiml/VoiceResponse.js';
import { PHRASES } from '../../../machines/call.machine.ts';
import type { CallView } from '../../engine/call-engine.ts';
import { sayAttributes, type SayOptions } from '../gather/twiml.ts';
import { renderRelayConnect, type RelayConnectOptions } from './connect-twiml.ts';

export const RELAY_ROUTES = {
  /** The WebSocket Twilio opens. */
  socket: '/relay',
  /** The `<Connect action>` Twilio requests when the session ends. */
  ended: '/relay-ended',
} as const;

/** How the relay speaks and listens (CALL_TRANSPORT=relay settings). */
export type RelaySettings = Pick<RelayConnectOptions, 'language' | 'ttsProvider' | 'voice' | 'interruptible' | 'interruptSensitivity'>;

/** The public base URL as a WebSocket's: `ws(s)://` for `http(s)://`. Twilio signs the socket's URL in this form. */
export function socketBaseUrl(publicBaseUrl: string): string {
  return publicBaseUrl.replace(/^http/i, 'ws');
}

/** The `<ConversationRelay url>`: the relay socket at the public base URL. */
export function relaySocketUrl(publicBaseUrl: string): string {
  return socketBaseUrl(publicBaseUrl) + RELAY_ROUTES.socket;
}

export function renderRelayListening(view: CallView, publicBaseUrl: string, settings: RelaySettings): string {
  const { prompt } = view.context;
  return renderRelayConnect({
    ...settings,
    url: relaySocketUrl(publicBaseUrl),
    action: publicBaseUrl + RELAY_ROUTES.ended,
    ...(prompt.kind === 'phrase' ? { welcomeGreeting: prompt.text } : {}),
    dtmfDetection: true,
  });
}

/**
 * The session ended mid-turn and another instance still holds the turn (it served
 * the socket; if it died, its lease lapses): RECONNECTED is pending. The caller
 * hears the machine's filler, then Twilio comes back to the action URL, which
 * brings RECONNECTED again, rather than to `/continue`, which would drop it.
 */
export function renderResumeWait(view: CallView, publicBaseUrl: string, say: SayOptions): string {
  const response = new VoiceResponse();
  if (view.context.filler === 'hold') response.say(sayAttributes(say), PHRASES.hold);
  else response.pause({ length: 1 });
  response.redirect({ method: 'POST' }, publicBaseUrl + RELAY_ROUTES.ended);
  return response.toString();
}
