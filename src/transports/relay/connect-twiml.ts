/**
 * The TwiML that hands a call to ConversationRelay:
 * `<Connect action="…"><ConversationRelay url="wss://…" …><Parameter …/></ConversationRelay></Connect>`.
 * Pure: the same options always render the same document. Built with twilio's
 * `VoiceResponse` like src/twilio/twiml.ts (escaping is its job), from its own
 * module to keep the rest of the twilio package off the start path.
 *
 * Twilio opens a WebSocket to `url` (signed like a webhook: upgrade-signature.ts)
 * and, when the session ends (`end` sent, socket closed or failed), requests the
 * `<Connect action>` URL, whose TwiML continues the call. `<Parameter>`s come
 * back in the `setup` message's `customParameters`.
 *
 * @see https://www.twilio.com/docs/voice/twiml/connect/conversationrelay
 * @see https://www.twilio.com/docs/voice/twiml/connect
 */
import VoiceResponse from 'twilio/lib/twiml/VoiceResponse.js';
import { speakableText } from '../../twilio/spoken-text.ts';
import { customParametersOf } from './messages.ts';

/** What caller input may cut the speech short; `any` is Twilio's default. */
export type RelayInterruptible = 'none' | 'dtmf' | 'speech' | 'any';

export interface RelayConnectOptions {
  /** The WebSocket Twilio opens: `wss://` (Twilio requires it), `ws://` only on loopback in tests. */
  url: string;
  /** Requested (POST) when the session ends; its TwiML continues the call. */
  action: string;
  /** Spoken by Twilio as soon as the session starts, before any `prompt`. */
  welcomeGreeting?: string;
  /** Language of speech and transcription, e.g. `en-US` (Twilio's default). */
  language?: string;
  /** `ElevenLabs`, `Google` or `Amazon`; ElevenLabs needs the account enabled for it. */
  ttsProvider?: string;
  /** A voice of `ttsProvider` (an ElevenLabs voice id, for example). */
  voice?: string;
  interruptible?: RelayInterruptible;
  /** How readily speech counts as an interruption: `low`, `medium` or `high` (default). */
  interruptSensitivity?: 'low' | 'medium' | 'high';
  /** Report key presses as `dtmf` messages. */
  dtmfDetection?: boolean;
  /** `<Parameter name value>`s, back in `setup.customParameters`. */
  parameters?: Record<string, string>;
}

export function renderRelayConnect(options: RelayConnectOptions): string {
  if (!/^wss?:\/\//i.test(options.url) || !URL.canParse(options.url)) throw new RangeError('ConversationRelay url must be a ws(s):// URL');
  if (!/^https?:\/\//i.test(options.action) || !URL.canParse(options.action)) throw new RangeError('<Connect> action must be an http(s) URL');
  const parameters = customParametersOf(options.parameters);
  const response = new VoiceResponse();
  const relay = response.connect({ action: options.action, method: 'POST' }).conversationRelay({
    url: options.url,
    // undefined attributes are left out of the document.
    welcomeGreeting: options.welcomeGreeting === undefined ? undefined : speakableText(options.welcomeGreeting),
    language: options.language,
    ttsProvider: options.ttsProvider,
    voice: options.voice,
    interruptible: options.interruptible,
    interruptSensitivity: options.interruptSensitivity,
    dtmfDetection: options.dtmfDetection,
  });
  for (const [name, value] of Object.entries(parameters)) relay.parameter({ name, value });
  return response.toString();
}
