/**
 * The TwiML of a call whose replies are streamed over ConversationRelay: when
 * the machine listens, Twilio is connected (again) to the relay socket, with the
 * prompt the caller hears first (the greeting, or "we were cut off") as the
 * session's welcome greeting. Every other state renders as for `<Gather>`: a wait
 * is the machine's filler, the closing line is said with `<Hangup/>`.
 *
 * @see https://www.twilio.com/docs/voice/twiml/connect/conversationrelay
 */
import type { CallView } from '../../engine/call-engine.ts';
import { renderRelayConnect, type RelayConnectOptions } from './connect-twiml.ts';

export const RELAY_ROUTES = {
  /** The WebSocket Twilio opens. */
  socket: '/relay',
  /** The `<Connect action>` Twilio requests when the session ends. */
  ended: '/relay-ended',
} as const;

/** How the relay speaks and listens (CALL_TRANSPORT=relay settings). */
export type RelaySettings = Pick<RelayConnectOptions, 'language' | 'ttsProvider' | 'voice' | 'interruptible' | 'interruptSensitivity'>;

/** `ws(s)://` for the public `http(s)://` base URL. */
export function relaySocketUrl(publicBaseUrl: string): string {
  return publicBaseUrl.replace(/^http/i, 'ws') + RELAY_ROUTES.socket;
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
