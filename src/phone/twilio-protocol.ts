/**
 * What both halves of the simulated Twilio share: the error a service's breach
 * of Twilio's contract raises, call SIDs, and TwiML read as strictly as Twilio
 * reads it. twilio-caller.ts (`<Gather>` and the call itself) and relay-caller.ts
 * (ConversationRelay) both import it; twilio-caller.ts re-exports it for the
 * tests and the benchmark.
 *
 * @see https://www.twilio.com/docs/voice/twiml
 */
import { randomBytes } from 'node:crypto';
import { XMLParser, XMLValidator } from 'fast-xml-parser';

export class TwilioProtocolError extends Error {
  override readonly name = 'TwilioProtocolError';
}

/** One element of a TwiML document, as fast-xml-parser's `preserveOrder` gives it. */
export type XmlNode = Record<string, unknown> & { ':@'?: Record<string, string> };

const parser = new XMLParser({
  preserveOrder: true,
  ignoreAttributes: false,
  attributeNamePrefix: '',
  parseTagValue: false,
  trimValues: false,
});

export function newCallSid(): string {
  return `CA${randomBytes(16).toString('hex')}`;
}

/** Parses a TwiML document strictly: well-formed XML with a `<Response>` root. */
export function parseTwiml(twiml: string): XmlNode[] {
  const valid = XMLValidator.validate(twiml);
  if (valid !== true) throw new TwilioProtocolError(`TwiML is not well-formed XML: ${valid.err.msg}`);
  const document = parser.parse(twiml) as XmlNode[];
  const root = document.find((node) => 'Response' in node);
  if (!root) throw new TwilioProtocolError('TwiML has no <Response> root');
  return (root.Response as XmlNode[]) ?? [];
}
