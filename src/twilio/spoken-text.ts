/**
 * Text that can be spoken and carried in TwiML. XML 1.0 cannot hold C0 control
 * characters (other than tab, LF, CR), U+FFFE, U+FFFF or lone surrogates, and
 * twilio's XML builder throws on them; C1 controls are legal XML but never speech.
 * Each becomes a space, so the words around it are still heard.
 *
 * Bidirectional controls (the marks U+200E, U+200F, U+061C, the embeddings and
 * overrides U+202A–U+202E, the isolates U+2066–U+2069) are never heard either, but
 * they reorder how text around them is shown: caller words carrying U+202E would
 * display backwards in the admin console, and could make a line say what it does
 * not. They are dropped (invisible, so no space is put in their place).
 * @see https://www.w3.org/TR/xml/#charsets
 * @see https://www.unicode.org/reports/tr9/#Explicit_Directional_Formatting_Characters
 */
const NOT_SPEAKABLE = /[^\t\n\r\u0020-\u007e\u00a0-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]/gu;
const BIDI_CONTROLS = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

export function speakableText(text: string): string {
  return text.toWellFormed().replace(NOT_SPEAKABLE, ' ').replace(BIDI_CONTROLS, '');
}
