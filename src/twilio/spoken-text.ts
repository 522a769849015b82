/**
 * Text that can be spoken and carried in TwiML. XML 1.0 cannot hold C0 control
 * characters (other than tab, LF, CR), U+FFFE, U+FFFF or lone surrogates, and
 * twilio's XML builder throws on them; C1 controls are legal XML but never speech.
 * Each becomes a space, so the words around it are still heard.
 * @see https://www.w3.org/TR/xml/#charsets
 */
const NOT_SPEAKABLE = /[^\t\n\r\u0020-\u007e\u00a0-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]/gu;

export function speakableText(text: string): string {
  return text.toWellFormed().replace(NOT_SPEAKABLE, ' ');
}
