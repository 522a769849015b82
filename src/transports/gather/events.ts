/**
 * The `<Gather>` transport's input: Twilio's form posts → typed requests and
 * machine events. Pure and strict: every
 * field is checked here, at the edge, and a request that is not what Twilio sends
 * becomes a `WebhookInputError` (answered 400) before it touches a call.
 *
 * @see https://www.twilio.com/docs/voice/twiml#request-parameters
 * @see https://www.twilio.com/docs/voice/twiml/gather#action
 * @see https://www.twilio.com/docs/voice/api/call-resource#statuscallback
 */
import type { CallEvent } from '../../../machines/call.machine.ts';
import { CALL_SID, MAX_UTTERANCE_CHARS } from '../../twilio/call-input.ts';
import { speakableText } from '../../twilio/spoken-text.ts';

export class WebhookInputError extends Error {
  override readonly name = 'WebhookInputError';
}

export type TwilioForm = Record<string, unknown>;

const TERMINAL_STATUSES = new Set(['completed', 'busy', 'failed', 'no-answer', 'canceled']);

export function callSidOf(form: TwilioForm): string {
  const sid = single(form, 'CallSid');
  if (sid === undefined || !CALL_SID.test(sid)) throw new WebhookInputError('CallSid is missing or malformed');
  return sid;
}

export interface CallStart {
  callSid: string;
  from: string;
  to: string;
}

export function callStartOf(form: TwilioForm): CallStart {
  return {
    callSid: callSidOf(form),
    from: phoneField(form, 'From'),
    to: phoneField(form, 'To'),
  };
}

export type SpeechEvent = Extract<CallEvent, { type: 'SPEECH' }>;

/** A `<Gather>` result: words become SPEECH, keys pressed DIGITS, nothing heard SILENCE. */
export function speechEventOf(form: TwilioForm, at: number): SpeechEvent | Extract<CallEvent, { type: 'SILENCE' | 'DIGITS' }> {
  const digits = single(form, 'Digits');
  if (digits !== undefined && digits !== '') {
    // DTMF keys: 0-9, * and # (https://www.twilio.com/docs/voice/twiml/gather#digits).
    if (!/^[0-9*#]{1,32}$/.test(digits)) throw new WebhookInputError('Digits is malformed');
    return { type: 'DIGITS', digits, at };
  }
  const raw = single(form, 'SpeechResult') ?? '';
  // Control characters and text XML cannot hold are never speech; drop them before anything sees the text.
  const text = speakableText(raw).replace(/\s+/g, ' ').trim().slice(0, MAX_UTTERANCE_CHARS).toWellFormed();
  if (text === '') return { type: 'SILENCE', at };
  const confidence = confidenceOf(single(form, 'Confidence'));
  return confidence === undefined ? { type: 'SPEECH', text, at } : { type: 'SPEECH', text, confidence, at };
}

/**
 * The caller's words brought back by a recovery `<Redirect>` (`renderRecovery`): in
 * the query of a URL Twilio signs, checked like the form, with the time they were
 * first heard. Undefined for a plain `<Gather>` result.
 */
export function recoveredSpeechOf(query: TwilioForm): SpeechEvent | undefined {
  const heardAt = single(query, 'heardAt');
  if (heardAt === undefined) return undefined;
  if (!/^\d{1,15}$/.test(heardAt)) throw new WebhookInputError('heardAt is malformed');
  const event = speechEventOf({ ...query, Digits: undefined }, Number(heardAt));
  if (event.type !== 'SPEECH') throw new WebhookInputError('SpeechResult is missing from a recovery redirect');
  return event;
}

/** The mark on the `/continue` that follows a reply's first pieces (twiml.ts puts it on the `<Redirect>`). */
export const PLAYED_MARK = { name: 'played', value: '1' } as const;
/** The query field of a `<Gather>` action naming the floor it was given at (`CallContext.floor`). */
export const FLOOR_FIELD = 'floor';

/**
 * `/continue`: Twilio played what it was given and asks what follows. After a
 * reply's first pieces (`?played=1`, see twiml.ts) that is PLAYED; after a hold
 * or a recovery it is no event: the call is picked up where it is.
 */
export function playedEventOf(query: TwilioForm, at: number): Extract<CallEvent, { type: 'PLAYED' }> | undefined {
  return single(query, PLAYED_MARK.name) === PLAYED_MARK.value ? { type: 'PLAYED', at } : undefined;
}

/**
 * The floor a `<Gather>` result answers, from its action URL (which Twilio signs):
 * a replay of an older request names an older floor. Absent from URLs rendered
 * before it existed.
 */
export function floorOf(query: TwilioForm): number | undefined {
  const floor = single(query, FLOOR_FIELD);
  if (floor === undefined) return undefined;
  if (!/^\d{1,6}$/.test(floor)) throw new WebhookInputError(`${FLOOR_FIELD} is malformed`);
  return Number(floor);
}

/** How many times in a row the service failed to answer this call, from a recovery redirect's URL (see `renderRecovery`). */
export function serviceFailuresOf(query: TwilioForm): number {
  const attempt = Number(single(query, 'attempt'));
  return Number.isInteger(attempt) && attempt > 0 && attempt < 10 ? attempt : 0;
}

/** A status callback: HANGUP once the call is over, nothing for progress updates. */
export function statusEventOf(form: TwilioForm, at: number): Extract<CallEvent, { type: 'HANGUP' }> | undefined {
  const status = single(form, 'CallStatus');
  if (status === undefined || !/^[a-z-]{1,20}$/.test(status)) throw new WebhookInputError('CallStatus is missing or malformed');
  if (!TERMINAL_STATUSES.has(status)) return undefined;
  const duration = single(form, 'CallDuration');
  const durationSec = duration !== undefined && /^\d{1,7}$/.test(duration) ? Number(duration) : undefined;
  return durationSec === undefined ? { type: 'HANGUP', at, status } : { type: 'HANGUP', at, status, durationSec };
}

function confidenceOf(raw: string | undefined): number | undefined {
  if (raw === undefined || raw.trim() === '') return undefined;
  const value = Number(raw);
  return Number.isFinite(value) && value >= 0 && value <= 1 ? value : undefined;
}

function phoneField(form: TwilioForm, name: string): string {
  const value = single(form, name) ?? '';
  // E.164, a SIP/client identity, or Twilio's "anonymous"-style placeholders: keep it short and printable.
  return value.replace(/[^\w+:@.\-]/g, '').slice(0, 64);
}

/** One value per field: a repeated parameter is not something Twilio sends. */
function single(form: TwilioForm, name: string): string | undefined {
  const value = form[name];
  if (value === undefined) return undefined;
  if (typeof value !== 'string') throw new WebhookInputError(`${name} must appear once`);
  return value;
}
