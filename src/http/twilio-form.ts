/**
 * Twilio's webhook bodies, parsed with bounds that fit what Twilio sends. The
 * signature check (twilio's `validateRequest`) sorts and joins every parameter
 * for each of six URL variants it tries: a 63 KB form of 16,000 empty keys cost
 * 13.5 ms of the event loop per request before it was refused. Such a form is
 * refused here, by counting separators before anything is parsed or checked.
 *
 * What Twilio sends: a voice request has about 27 parameters (CallSid, AccountSid,
 * From, To, CallStatus, ApiVersion, Direction, ForwardedFrom, CallerName,
 * ParentCallSid, CallToken, the From/To/Caller/Called City, State, Zip and
 * Country, StirVerstat), a `<Gather>` action adds SpeechResult and Confidence, a
 * status callback CallDuration, Timestamp, CallbackSource, SequenceNumber and a
 * few more: under 40 in every case. The longest value is SpeechResult, the
 * transcript of one spoken answer: the service keeps 2,000 characters of it
 * (src/transports/gather/events.ts), 18 KB percent-encoded even when every
 * character is three UTF-8 bytes (a minute of speech is about 1,000 characters).
 * So 100 parameters and 32 KiB hold any real request with room to spare.
 *
 * @see https://www.twilio.com/docs/voice/twiml#request-parameters
 * @see https://www.twilio.com/docs/voice/twiml/gather#action
 * @see https://www.twilio.com/docs/voice/api/call-resource#statuscallback
 */
import { parse } from 'node:querystring';

/** Most parameters a webhook form may have (Twilio's have under 40). */
export const MAX_FORM_PARAMETERS = 100;
/** Largest webhook body accepted, bytes (Twilio's are a few KB). */
export const MAX_FORM_BYTES = 32 * 1024;

/** A form no Twilio webhook would send: answered 413 before the signature is checked. */
export class ImplausibleFormError extends Error {
  override readonly name = 'ImplausibleFormError';
  readonly statusCode = 413;
}

/** The parser for `application/x-www-form-urlencoded` (through @fastify/formbody): repeated names become arrays. */
export function parseTwilioForm(body: string): Record<string, string | string[]> {
  let parameters = 1;
  for (let at = body.indexOf('&'); at !== -1; at = body.indexOf('&', at + 1)) {
    parameters += 1;
    if (parameters > MAX_FORM_PARAMETERS) {
      throw new ImplausibleFormError(`Content Too Large: a Twilio webhook form has at most ${MAX_FORM_PARAMETERS} parameters`);
    }
  }
  // Counted above, so no parameter is dropped silently (querystring's own default stops at 1,000).
  return parse(body, '&', '=', { maxKeys: 0 }) as Record<string, string | string[]>;
}
