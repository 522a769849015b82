/**
 * Machine state → TwiML. Pure: the same view always renders the same document.
 * Built with twilio's `VoiceResponse` (escaping is its job, never string
 * concatenation), imported from its own module to keep the rest of the twilio
 * package off the start path.
 *
 * - `listening`: the prompt inside a speech `<Gather>` (the caller may talk over
 *   it); `actionOnEmptyResult` makes silence come back as a request too.
 * - a working state (`thinking`, `speaking`, ...) past the webhook deadline: hold.
 *   The first hold says a short acknowledgement, later ones pause; both `<Redirect>`
 *   to `/continue`, which picks the result up.
 * - `terminating`: the closing line and `<Hangup/>`.
 *
 * @see https://www.twilio.com/docs/voice/twiml/gather
 * @see https://www.twilio.com/docs/voice/twiml/redirect
 */
import VoiceResponse from 'twilio/lib/twiml/VoiceResponse.js';
import { PHRASES, type CallContext, type Prompt } from '../../machines/call.machine.ts';
import { speakableText } from './spoken-text.ts';

export const ROUTES = {
  voice: '/voice',
  speechResult: '/speech-result',
  continue: '/continue',
  callStatus: '/call-status',
} as const;

export interface CallView {
  state: string;
  context: CallContext;
}

export interface RenderOptions {
  baseUrl: string;
  /** Turns an audio path into a signed, expiring URL path. */
  signAudio(path: string): string;
  /** Path of the synthesised hold phrase, when it is ready. */
  holdAudio?: string | undefined;
  /** Voice for `<Say>` (e.g. `Polly.Joanna`); Twilio's default when absent. */
  sayVoice?: string | undefined;
}

type Speaker = Pick<VoiceResponse, 'say' | 'play'>;

export function renderCallTwiml(view: CallView, options: RenderOptions): string {
  const response = new VoiceResponse();
  switch (view.state) {
    case 'listening': {
      const gather = response.gather({
        input: ['speech'],
        speechTimeout: 'auto',
        action: options.baseUrl + ROUTES.speechResult,
        method: 'POST',
        actionOnEmptyResult: true,
      });
      speak(gather, view.context.prompt, options);
      break;
    }
    case 'terminating':
      speak(response, view.context.prompt, options);
      response.hangup();
      break;
    case 'ended':
      response.hangup();
      break;
    default:
      hold(response, view.context.holds, options);
  }
  return response.toString();
}

function speak(into: Speaker, prompt: Prompt, options: RenderOptions) {
  if (prompt.audio) into.play(options.baseUrl + options.signAudio(prompt.audio));
  else say(into, prompt.text, options);
}

function say(into: Speaker, raw: string, options: RenderOptions) {
  const text = speakableText(raw);
  if (options.sayVoice) into.say({ voice: options.sayVoice as VoiceResponse.SayAttributes["voice"] }, text);
  else into.say(text);
}

function hold(response: VoiceResponse, holds: number, options: RenderOptions) {
  if (holds <= 1) {
    if (options.holdAudio) response.play(options.baseUrl + options.signAudio(options.holdAudio));
    else say(response, PHRASES.hold, options);
  } else {
    response.pause({ length: 1 });
  }
  response.redirect({ method: 'POST' }, options.baseUrl + ROUTES.continue);
}

/** A webhook for a call this service does not know (or no longer keeps). */
export function renderUnknownCall(options: Pick<RenderOptions, 'sayVoice'>): string {
  const response = new VoiceResponse();
  say(response, "Sorry, this call can't be continued. Please call again. Goodbye.", { ...options, baseUrl: '', signAudio: (p) => p });
  response.hangup();
  return response.toString();
}

export const MAX_RECOVERY_ATTEMPTS = 3;

/**
 * Something inside the service failed: keep the caller on the line and try again
 * through `/continue`, a few times, then end politely. Never a 5xx to Twilio.
 */
export function renderRecovery(attempt: number, options: Pick<RenderOptions, 'baseUrl' | 'sayVoice'>): string {
  const response = new VoiceResponse();
  const plain = { ...options, signAudio: (p: string) => p };
  if (attempt >= MAX_RECOVERY_ATTEMPTS) {
    say(response, PHRASES.goodbyeFailures, plain);
    response.hangup();
  } else {
    say(response, 'Sorry, one moment please.', plain);
    response.pause({ length: 1 });
    response.redirect({ method: 'POST' }, `${options.baseUrl}${ROUTES.continue}?attempt=${attempt + 1}`);
  }
  return response.toString();
}

/** For requests Twilio ignores the body of (status callbacks). */
export function renderEmpty(): string {
  return new VoiceResponse().toString();
}
