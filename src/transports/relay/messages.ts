/**
 * ConversationRelay's WebSocket messages ↔ typed values. Pure and strict, like
 * src/transports/gather/events.ts for the `<Gather>` forms: every field is checked here, at
 * the edge, and a frame that is not what Twilio sends becomes a
 * `RelayMessageError` (the only thing these functions throw) before it touches a
 * call. A message type Twilio may add later is not an error: it parses to
 * `{ type: 'ignored' }`.
 *
 * - From Twilio: `setup`, `prompt`, `interrupt`, `dtmf`, `error` (`parseTwilioMessage`).
 * - To Twilio: `text`, `play`, `sendDigits`, `language`, `end` (`serialiseServiceMessage`),
 *   checked against the validation rules Twilio lists for each; the simulated
 *   Twilio (src/phone/relay-caller.ts) reads them back with `parseServiceMessage`.
 *
 * Fields of Twilio's messages this service does not use (`accountSid`,
 * `parentCallSid`, `forwardedFrom`, `callType`, `callerName`, `callStatus`) are
 * not read, so they cannot make a message malformed.
 *
 * @see https://www.twilio.com/docs/voice/conversationrelay/websocket-messages
 */
import { CALL_SID, MAX_UTTERANCE_CHARS } from '../../twilio/call-input.ts';
import { speakableText } from '../../twilio/spoken-text.ts';

export class RelayMessageError extends Error {
  override readonly name = 'RelayMessageError';
}

/**
 * Largest frame read, in bytes (UTF-16 units for a string). Twilio's messages are
 * a few hundred bytes; the longest is an `interrupt` quoting what the caller heard
 * of a long answer. Checked before anything is decoded or parsed. The WebSocket
 * server's own `maxPayload` should stay above it: past that, `ws` closes the
 * socket, where a frame refused here is only logged and dropped.
 */
export const MAX_RELAY_FRAME_BYTES = 64 * 1024;
/** Longest `utteranceUntilInterrupt`: our own answer as far as the caller heard it, so longer than a caller's turn. */
export const MAX_HEARD_CHARS = 8_000;
/** Twilio's `error.description` quotes the message it refused; only a log line, so it is cut here rather than refused. */
const MAX_DESCRIPTION_CHARS = 1_000;
const MAX_CUSTOM_PARAMETERS = 32;
const MAX_PARAMETER_VALUE_CHARS = 1_000;
const MAX_HANDOFF_DATA_CHARS = 8_000;
const MAX_URL_CHARS = 2_000;
/** An interrupt a day into an answer is no phone call. */
const MAX_INTERRUPT_DURATION_MS = 86_400_000;
/** `play.loop`: "A value of 0 plays it 1,000 times (maximum)". */
const MAX_PLAY_LOOP = 1_000;

const SESSION_SID = /^VX[0-9a-fA-F]{32}$/;
/** E.164, a `client:`/`sip:` identity or a placeholder such as `anonymous`; may be empty. */
const ADDRESS = /^[\w+:@.\-]{0,128}$/;
/** `inbound`, `outbound-api`, `outbound-dial`. */
const DIRECTION = /^[a-z-]{1,20}$/;
/** A BCP 47 tag as Twilio writes them (`en-US`, `sv-SE`); `multi` for multilingual sessions. */
const LANGUAGE = /^[A-Za-z]{2,8}(?:-[A-Za-z0-9]{1,8}){0,4}$/;
const KEYPAD_DIGIT = /^[0-9*#]$/;
/** `sendDigits`: "Must only contain the characters 0-9, w, #, and *." */
const DIGITS_TO_SEND = /^[0-9w#*]{1,100}$/;
const MESSAGE_TYPE = /^[A-Za-z][A-Za-z0-9_-]{0,39}$/;
const PARAMETER_NAME = /^[A-Za-z0-9_.-]{1,64}$/;
/** Control and format characters (bidi overrides, zero-width, BOM) have no place in an identifier or a parameter. */
const INVISIBLE = /[\p{Cc}\p{Cf}]/u;

/** Sent "immediately after establishing the WebSocket connection". `customParameters`: the `<Parameter>`s of the TwiML. */
export interface SetupMessage {
  type: 'setup';
  sessionId: string;
  callSid: string;
  from: string;
  to: string;
  direction: string;
  customParameters: Record<string, string>;
}

/** The caller said something; `last: false` marks a partial transcript. `voicePrompt` is speakable text (may be empty). */
export interface PromptMessage {
  type: 'prompt';
  voicePrompt: string;
  lang?: string;
  last: boolean;
}

/** The caller spoke over the answer after hearing `utteranceUntilInterrupt` of it. */
export interface InterruptMessage {
  type: 'interrupt';
  utteranceUntilInterrupt: string;
  durationUntilInterruptMs: number;
}

/** A key pressed (with `dtmfDetection` on). */
export interface DtmfMessage {
  type: 'dtmf';
  digit: string;
}

/** Twilio could not act on something the service sent (error 64107); the session goes on. */
export interface ErrorMessage {
  type: 'error';
  description: string;
}

/** A message type this service does not know: not an error, nothing to do. */
export interface IgnoredMessage {
  type: 'ignored';
  messageType: string;
}

export type TwilioMessage = SetupMessage | PromptMessage | InterruptMessage | DtmfMessage | ErrorMessage | IgnoredMessage;

/** Text to speak; `last` ends the answer ("the final token in the current message"). Tokens are not trimmed. */
export interface TextMessage {
  type: 'text';
  token: string;
  last: boolean;
  lang?: string;
  interruptible?: boolean;
  preemptible?: boolean;
}

export interface PlayMessage {
  type: 'play';
  source: string;
  loop?: number;
  preemptible?: boolean;
  interruptible?: boolean;
}

export interface SendDigitsMessage {
  type: 'sendDigits';
  digits: string;
}

/** Switches the language of later speech and transcription; at least one of the two. */
export interface LanguageMessage {
  type: 'language';
  ttsLanguage?: string;
  transcriptionLanguage?: string;
}

/** Ends the session; Twilio requests the `<Connect action>` URL with `handoffData` (JSON text). */
export interface EndMessage {
  type: 'end';
  handoffData?: string;
}

export type ServiceMessage = TextMessage | PlayMessage | SendDigitsMessage | LanguageMessage | EndMessage;

type JsonObject = Record<string, unknown>;

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * One frame from Twilio → a typed message. `isBinary` is the WebSocket frame's
 * opcode (`ws` passes it beside the data): Twilio sends JSON in text frames only.
 */
export function parseTwilioMessage(data: string | Uint8Array, isBinary = false): TwilioMessage {
  const message = jsonObjectOf(data, isBinary);
  const type = messageTypeOf(message);
  switch (type) {
    case 'setup':
      return {
        type,
        sessionId: token(message, 'sessionId', SESSION_SID),
        callSid: token(message, 'callSid', CALL_SID),
        from: token(message, 'from', ADDRESS),
        to: token(message, 'to', ADDRESS),
        direction: token(message, 'direction', DIRECTION),
        customParameters: customParametersOf(message.customParameters),
      };
    case 'prompt': {
      const lang = optionalToken(message, 'lang', LANGUAGE);
      const prompt: PromptMessage = { type, voicePrompt: words(message, 'voicePrompt', MAX_UTTERANCE_CHARS), last: flag(message, 'last') };
      return lang === undefined ? prompt : { ...prompt, lang };
    }
    case 'interrupt':
      return {
        type,
        utteranceUntilInterrupt: words(message, 'utteranceUntilInterrupt', MAX_HEARD_CHARS),
        durationUntilInterruptMs: durationMsOf(message.durationUntilInterruptMs),
      };
    case 'dtmf':
      return { type, digit: token(message, 'digit', KEYPAD_DIGIT) };
    case 'error': {
      const description = message.description;
      if (typeof description !== 'string') throw new RelayMessageError('description must be a string');
      return { type, description: spoken(description.slice(0, MAX_DESCRIPTION_CHARS)) };
    }
    default:
      return { type: 'ignored', messageType: type };
  }
}

/** A message for Twilio → its JSON text, fields in the order Twilio's docs show them. */
export function serialiseServiceMessage(message: ServiceMessage): string {
  return JSON.stringify(serviceMessageOf(message as unknown as JsonObject));
}

/**
 * One frame from the service, read as ConversationRelay reads it: what
 * `serialiseServiceMessage` writes, and nothing Twilio's validation rules refuse
 * (Twilio answers those with an `error` message, error 64107). For the simulated
 * Twilio; the service itself only writes these.
 */
export function parseServiceMessage(data: string | Uint8Array, isBinary = false): ServiceMessage {
  return serviceMessageOf(jsonObjectOf(data, isBinary));
}

function serviceMessageOf(message: JsonObject): ServiceMessage {
  const type = messageTypeOf(message);
  switch (type) {
    case 'text': {
      const raw = message.token;
      // "Required. Cannot be null." Control characters are never speech: spaces, as on the <Gather> path.
      if (typeof raw !== 'string') throw new RelayMessageError('token must be a string');
      const last = optionalFlag(message, 'last') ?? false;
      return withOptional(
        { type, token: speakableText(raw), last },
        { lang: optionalToken(message, 'lang', LANGUAGE), interruptible: optionalFlag(message, 'interruptible'), preemptible: optionalFlag(message, 'preemptible') },
      );
    }
    case 'play':
      return withOptional(
        { type, source: mediaUrl(message.source) },
        { loop: playLoopOf(message.loop), preemptible: optionalFlag(message, 'preemptible'), interruptible: optionalFlag(message, 'interruptible') },
      );
    case 'sendDigits':
      return { type, digits: token(message, 'digits', DIGITS_TO_SEND) };
    case 'language': {
      const languages = { ttsLanguage: optionalToken(message, 'ttsLanguage', LANGUAGE), transcriptionLanguage: optionalToken(message, 'transcriptionLanguage', LANGUAGE) };
      if (languages.ttsLanguage === undefined && languages.transcriptionLanguage === undefined) {
        throw new RelayMessageError('a language message needs ttsLanguage or transcriptionLanguage');
      }
      return withOptional({ type }, languages);
    }
    case 'end':
      return withOptional({ type }, { handoffData: handoffDataOf(message.handoffData) });
    default:
      throw new RelayMessageError(`ConversationRelay accepts no message of type ${type}`);
  }
}

/** Size first (cheap), then UTF-8, then JSON: a frame is a JSON object or it is refused. */
function jsonObjectOf(data: string | Uint8Array, isBinary: boolean): JsonObject {
  if (isBinary) throw new RelayMessageError('a binary frame (ConversationRelay messages are JSON text)');
  if (data.length > MAX_RELAY_FRAME_BYTES) throw new RelayMessageError(`a frame over ${MAX_RELAY_FRAME_BYTES} bytes`);
  let value: unknown;
  try {
    value = JSON.parse(typeof data === 'string' ? data : utf8.decode(data));
  } catch {
    throw new RelayMessageError('a frame that is not UTF-8 JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new RelayMessageError('a frame that is not a JSON object');
  return value as JsonObject;
}

function messageTypeOf(message: JsonObject): string {
  const type = message.type;
  if (typeof type !== 'string' || !MESSAGE_TYPE.test(type)) throw new RelayMessageError('type is missing or malformed');
  return type;
}

function token(message: JsonObject, name: string, pattern: RegExp): string {
  const value = message[name];
  if (typeof value !== 'string' || !pattern.test(value)) throw new RelayMessageError(`${name} is missing or malformed`);
  return value;
}

function optionalToken(message: JsonObject, name: string, pattern: RegExp): string | undefined {
  return message[name] === undefined ? undefined : token(message, name, pattern);
}

function flag(message: JsonObject, name: string): boolean {
  const value = message[name];
  if (typeof value !== 'boolean') throw new RelayMessageError(`${name} must be true or false`);
  return value;
}

function optionalFlag(message: JsonObject, name: string): boolean | undefined {
  return message[name] === undefined ? undefined : flag(message, name);
}

/** What a person said or heard: bounded, then made speakable and single-spaced exactly as a `<Gather>` result is. */
function words(message: JsonObject, name: string, maxChars: number): string {
  const value = message[name];
  if (typeof value !== 'string' || value.length > maxChars) throw new RelayMessageError(`${name} must be a string of at most ${maxChars} characters`);
  return spoken(value);
}

function spoken(text: string): string {
  return speakableText(text).replace(/\s+/g, ' ').trim();
}

/**
 * `setup.customParameters`, or the `<Parameter>`s that become them
 * (connect-twiml.ts checks its own with this, so a TwiML never sets one its
 * setup message would be refused for).
 */
export function customParametersOf(value: unknown): Record<string, string> {
  if (value === undefined) return {};
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new RelayMessageError('customParameters must be an object');
  const entries = Object.entries(value);
  if (entries.length > MAX_CUSTOM_PARAMETERS) throw new RelayMessageError(`more than ${MAX_CUSTOM_PARAMETERS} customParameters`);
  for (const [name, parameter] of entries) {
    if (!PARAMETER_NAME.test(name)) throw new RelayMessageError('a customParameters name is malformed');
    if (typeof parameter !== 'string' || parameter.length > MAX_PARAMETER_VALUE_CHARS || !printable(parameter)) {
      throw new RelayMessageError(`customParameters.${name} must be printable text of at most ${MAX_PARAMETER_VALUE_CHARS} characters`);
    }
  }
  // Object.fromEntries defines own properties: a parameter named __proto__ stays a parameter.
  return Object.fromEntries(entries) as Record<string, string>;
}

/** A number in one of Twilio's examples (460), a string in another ("460"): either way a whole number of ms. */
function durationMsOf(value: unknown): number {
  const ms = typeof value === 'string' && /^\d{1,9}$/.test(value) ? Number(value) : value;
  if (typeof ms !== 'number' || !Number.isSafeInteger(ms) || ms < 0 || ms > MAX_INTERRUPT_DURATION_MS) {
    throw new RelayMessageError('durationUntilInterruptMs must be a whole number of milliseconds');
  }
  return ms;
}

/** `play.source`: "Required. Must contain a valid URL." Media is fetched over HTTP(S). */
function mediaUrl(value: unknown): string {
  if (typeof value !== 'string' || value.length > MAX_URL_CHARS || !/^https?:\/\//i.test(value) || !URL.canParse(value) || !printable(value)) {
    throw new RelayMessageError('source must be an http(s) URL');
  }
  return value;
}

/** `play.loop`: "Optional, integer value"; 0 is the maximum, 1,000 plays. */
function playLoopOf(value: unknown): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > MAX_PLAY_LOOP) {
    throw new RelayMessageError(`loop must be a whole number from 0 to ${MAX_PLAY_LOOP}`);
  }
  return value;
}

/** `end.handoffData`: "A string containing data to pass back in the action callback"; JSON text, as in Twilio's example. */
function handoffDataOf(value: unknown): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || value.length > MAX_HANDOFF_DATA_CHARS || !isJson(value)) {
    throw new RelayMessageError(`handoffData must be JSON text of at most ${MAX_HANDOFF_DATA_CHARS} characters`);
  }
  return value;
}

function isJson(text: string): boolean {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}

function printable(text: string): boolean {
  return text.isWellFormed() && !INVISIBLE.test(text);
}

/** The message with the optional fields that are set, in the order given (JSON keeps it). */
function withOptional<T extends { type: string }>(required: T, optional: Record<string, unknown>): T {
  const present = Object.entries(optional).filter(([, value]) => value !== undefined);
  return { ...required, ...Object.fromEntries(present) };
}
