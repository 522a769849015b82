/**
 * The `<Gather>` transport's output: machine state → TwiML. Pure: the same view
 * always renders the same document. Built with twilio's `VoiceResponse` (escaping
 * is its job, never string concatenation), imported from its own module to keep
 * the rest of the twilio package off the start path. Every line said here is one
 * of the machine's PHRASES or the agent's words; what is said when is the machine's.
 *
 * - `listening`: the prompt inside a speech `<Gather>` (the caller may talk over
 *   it); `actionOnEmptyResult` makes silence come back as a request too. Its
 *   action names the floor (`?floor=`), so a replayed result is told from a new one.
 * - `replying`: the first pieces of a reply the agent is still writing, then a
 *   `<Redirect>` to `/continue?played=1` for the rest (the mark tells this redirect
 *   from a hold's: only once the pieces have played is it PLAYED). Twilio plays a
 *   `<Play>` only once its file is downloaded, and fetches every `<Play>` nested in
 *   a `<Gather>` before it plays the first, so each piece is a complete file served
 *   from memory, and the rest of a reply comes in one `<Gather>` once it is all
 *   voiced. Pieces the phone reads (no voice, or synthesis failed) are joined into
 *   one `<Say>`.
 * - a working state (`thinking`, `speaking`, ...) past the step's deadline: the
 *   machine's filler (the hold line, or a pause), then `<Redirect>` to `/continue`,
 *   which picks the result up. A view with a PLAYED still pending keeps asking for it.
 * - `terminating`: the closing line and `<Hangup/>`.
 *
 * @see https://www.twilio.com/docs/voice/twiml/gather
 * @see https://www.twilio.com/docs/voice/twiml/redirect
 * @see https://www.twilio.com/docs/voice/twiml/play
 */
import VoiceResponse from 'twilio/lib/twiml/VoiceResponse.js';
import { afterServiceFailure, PHRASES, type Prompt } from '../../../machines/call.machine.ts';
import type { CallView } from '../../engine/call-engine.ts';
import { speakableText } from '../../twilio/spoken-text.ts';
import { FLOOR_FIELD, PLAYED_MARK } from './events.ts';

export const ROUTES = {
  voice: '/voice',
  speechResult: '/speech-result',
  continue: '/continue',
  callStatus: '/call-status',
} as const;

/** The query of the `/continue` that follows a reply's first pieces. */
const PLAYED_QUERY = `${PLAYED_MARK.name}=${PLAYED_MARK.value}`;

export interface RenderOptions {
  baseUrl: string;
  /** Turns an audio path into a signed, expiring URL path. */
  signAudio(path: string): string;
  /** Path of the synthesised hold phrase, when it is ready. */
  holdAudio?: string | undefined;
  /** Voice for `<Say>` (e.g. `Polly.Joanna`); Twilio's default when absent. */
  sayVoice?: string | undefined;
  /** Language for `<Say>` (e.g. `en-GB`); Twilio's default when absent. */
  sayLanguage?: string | undefined;
}

type Speaker = Pick<VoiceResponse, 'say' | 'play'>;

export function renderCallTwiml(view: CallView, options: RenderOptions): string {
  const response = new VoiceResponse();
  switch (view.state) {
    case 'listening': {
      const gather = response.gather({
        // A key press ends the <Gather> at once (numDigits 1): the digit is the caller's turn.
        input: ['speech', 'dtmf'],
        numDigits: 1,
        speechTimeout: 'auto',
        action: `${options.baseUrl}${ROUTES.speechResult}?${FLOOR_FIELD}=${view.context.floor}`,
        method: 'POST',
        actionOnEmptyResult: true,
      });
      speak(gather, view.context.prompt, options);
      break;
    }
    case 'replying':
      speak(response, view.context.prompt, options);
      response.redirect({ method: 'POST' }, `${options.baseUrl}${ROUTES.continue}?${PLAYED_QUERY}`);
      break;
    case 'terminating':
      speak(response, view.context.prompt, options);
      response.hangup();
      break;
    case 'ended':
      response.hangup();
      break;
    default:
      wait(response, view, options);
  }
  return response.toString();
}

function speak(into: Speaker, prompt: Prompt, options: RenderOptions) {
  if (prompt.pieces) {
    let unvoiced: string[] = [];
    const sayUnvoiced = () => {
      if (unvoiced.length > 0) say(into, unvoiced.join(' '), options);
      unvoiced = [];
    };
    for (const piece of prompt.pieces) {
      if (piece.audio) {
        sayUnvoiced();
        into.play(options.baseUrl + options.signAudio(piece.audio));
      } else if (piece.text) {
        unvoiced.push(piece.text);
      }
    }
    sayUnvoiced();
  } else if (prompt.audio) {
    into.play(options.baseUrl + options.signAudio(prompt.audio));
  } else if (prompt.text) {
    say(into, prompt.text, options);
  }
}

function say(into: Speaker, raw: string, options: RenderOptions) {
  const attributes = sayAttributes(options);
  for (const text of sayableParts(speakableText(raw))) into.say(attributes, text);
}

/** `<Say>`'s voice and language attributes. */
export function sayAttributes(options: SayOptions): VoiceResponse.SayAttributes {
  const attributes: VoiceResponse.SayAttributes = {};
  // Validated at start against Twilio's forms (src/config.ts SAY_VOICE, SAY_LANGUAGE).
  if (options.sayVoice) attributes.voice = options.sayVoice as VoiceResponse.SayAttributes['voice'];
  if (options.sayLanguage) attributes.language = options.sayLanguage as VoiceResponse.SayAttributes['language'];
  return attributes;
}

/**
 * Twilio refuses a `<Say>` of more than 4,096 characters (error 13521), so a
 * longer text is said in several, cut between sentences (between words within a
 * sentence longer than that, at worst inside one word). UTF-16 units are counted:
 * never fewer than characters.
 * @see https://www.twilio.com/docs/api/errors/13521
 */
export const MAX_SAY_CHARS = 4_096;

export function sayableParts(text: string, max = MAX_SAY_CHARS): string[] {
  if (text.length <= max) return [text];
  const parts: string[] = [];
  let current = '';
  const add = (unit: string) => {
    if (current.length + unit.length <= max) {
      current += unit;
      return;
    }
    if (current.trim() !== '') parts.push(current.trim());
    current = unit;
  };
  for (const { segment: sentence } of new Intl.Segmenter('en', { granularity: 'sentence' }).segment(text)) {
    if (sentence.length <= max) {
      add(sentence);
      continue;
    }
    for (const { segment: word } of new Intl.Segmenter('en', { granularity: 'word' }).segment(sentence)) {
      if (word.length <= max) add(word);
      else {
        // Whole code points: a lone surrogate is not XML.
        const chars = Array.from(word);
        for (let i = 0; i < chars.length; i += max / 2) add(chars.slice(i, i + max / 2).join(''));
      }
    }
  }
  if (current.trim() !== '') parts.push(current.trim());
  return parts;
}

/** A slow turn: the machine's filler (the hold line, else a pause), then back for the result, with a PLAYED still to apply if there is one. */
function wait(response: VoiceResponse, view: CallView, options: RenderOptions) {
  if (view.context.filler === 'hold') {
    if (options.holdAudio) response.play(options.baseUrl + options.signAudio(options.holdAudio));
    else say(response, PHRASES.hold, options);
  } else {
    response.pause({ length: 1 });
  }
  const played = view.pending?.type === 'PLAYED';
  response.redirect({ method: 'POST' }, options.baseUrl + ROUTES.continue + (played ? `?${PLAYED_QUERY}` : ''));
}

/** A webhook for a call this service does not know (or no longer keeps). */
/** The voice and language of `<Say>`. */
export type SayOptions = Pick<RenderOptions, 'sayVoice' | 'sayLanguage'>;

export function renderUnknownCall(options: SayOptions): string {
  const response = new VoiceResponse();
  say(response, PHRASES.callLost, { ...options, baseUrl: '', signAudio: (p) => p });
  response.hangup();
  return response.toString();
}

/** Twilio takes URLs of up to 4,000 characters (https://www.twilio.com/docs/api/errors/21609). */
const MAX_URL_CHARS = 4_000;

/** Caller's words that a failed `/speech-result` could not take. */
export interface UntakenSpeech {
  text: string;
  confidence?: number;
  /** When they were first heard (ms since epoch): the turn keeps that time. */
  at: number;
}

/**
 * Something inside the service failed (`failures` times in a row, this one
 * included): the machine's `afterServiceFailure` says whether the caller is kept
 * on the line and tried again through `/continue`, or the call ends politely.
 * Never a 5xx to Twilio. There may be no readable state at all (the store is
 * down), so the count travels in the retry's signed URL.
 * With `speech`, the retry goes back to `/speech-result` with the caller's words
 * in its (signed) URL, so they need not say them again; with `continuing`, it
 * still asks for the rest of a reply (CONTINUE), so the caller does not hear its
 * first pieces again.
 */
export function renderRecovery(
  failures: number,
  options: Pick<RenderOptions, 'baseUrl'> & SayOptions,
  speech?: UntakenSpeech,
  played = false,
): string {
  const response = new VoiceResponse();
  const plain = { ...options, signAudio: (p: string) => p };
  const next = afterServiceFailure(failures);
  say(response, PHRASES[next.say], plain);
  if (next.then === 'hangup') {
    response.hangup();
  } else {
    response.pause({ length: 1 });
    response.redirect({ method: 'POST' }, retryUrl(options.baseUrl, failures, speech, played));
  }
  return response.toString();
}

function retryUrl(baseUrl: string, attempt: number, speech: UntakenSpeech | undefined, played: boolean): string {
  const pickUp = `${baseUrl}${ROUTES.continue}?attempt=${attempt}${played ? `&${PLAYED_QUERY}` : ''}`;
  if (!speech) return pickUp;
  const query = new URLSearchParams({ attempt: String(attempt), heardAt: String(speech.at) });
  if (speech.confidence !== undefined) query.set('Confidence', String(speech.confidence));
  const head = `${baseUrl}${ROUTES.speechResult}?${query}&SpeechResult=`;
  const words = formEncodedWithin(speech.text, MAX_URL_CHARS - head.length);
  return words === '' ? pickUp : head + words;
}

/** The longest start of `text`, form-encoded, that fits in `budget` characters (whole characters only). */
function formEncodedWithin(text: string, budget: number): string {
  const whole = new URLSearchParams({ s: text }).toString().slice(2);
  if (whole.length <= budget) return whole;
  let encoded = '';
  for (const char of text) {
    const next = new URLSearchParams({ s: char }).toString().slice(2);
    if (encoded.length + next.length > budget) break;
    encoded += next;
  }
  return encoded;
}

/** For requests Twilio ignores the body of (status callbacks). */
export function renderEmpty(): string {
  return new VoiceResponse().toString();
}
