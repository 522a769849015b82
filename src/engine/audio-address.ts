/**
 * Where synthesised audio lives, in one place: a piece of a reply has a key
 * (`t<turn>` for its first piece, `t<turn>p<n>` for the n-th after it), an id in
 * the voice library (`<callSid>/<key>`), and a path Twilio fetches
 * (`/audio/call/<callSid>/<key>`); a fixed phrase has `/audio/phrase/<name>`. Keys
 * are parsed back here too, and a key's text is found in a call's turns here, so
 * an instance that did not voice a piece can voice it again when Twilio asks.
 *
 * A reply's own key (`t<turn>`) comes from the machine (`replyKey`): a reply voiced
 * in one piece keeps the key it always had.
 */
import { replyKey, type Turn } from '../../machines/call.machine.ts';
import { textAround } from '../speech/speakable-pieces.ts';
import type { SpeechRequest } from '../speech/speech.ts';

export const AUDIO_ROUTES = {
  phrase: '/audio/phrase/:name',
  reply: '/audio/call/:callSid/:key',
} as const;

export function phraseAudioPath(name: string): string {
  return `/audio/phrase/${name}`;
}

/** The key of piece `piece` (0-based) of turn `turn`'s reply. */
export function pieceKey(turn: number, piece: number): string {
  return piece === 0 ? replyKey(turn) : `${replyKey(turn)}p${piece}`;
}

/** A piece key back into its turn and piece; undefined for anything else (bounded: a key comes from a URL). */
export function parsePieceKey(key: string): { turn: number; piece: number } | undefined {
  const match = /^t(\d{1,6})(?:p([1-9]\d{0,3}))?$/.exec(key);
  return match ? { turn: Number(match[1]), piece: Number(match[2] ?? 0) } : undefined;
}

/** The voice library's id of a reply piece's audio. */
export function replyAudioId(callSid: string, key: string): string {
  return `${callSid}/${key}`;
}

export function replyAudioPath(callSid: string, key: string): string {
  return `/audio/call/${callSid}/${key}`;
}

/**
 * The text of a reply piece, from a call's turns, with the reply's own text
 * around it (ElevenLabs' previous_text / next_text, never the caller's words):
 * `t<turn>` is that turn's reply, or its first piece when it was voiced in
 * pieces; `t<turn>p<n>` its n-th piece after that.
 */
export function pieceText(turns: Array<Pick<Turn, 'index' | 'reply' | 'pieces'>>, key: string): SpeechRequest | undefined {
  const address = parsePieceKey(key);
  if (!address) return undefined;
  const turn = turns.find((t) => t.index === address.turn);
  const text = turn?.pieces ? turn.pieces[address.piece] : address.piece === 0 ? turn?.reply : undefined;
  if (!turn || !text) return undefined;
  return { text, ...(turn.pieces ? textAround(turn.pieces, address.piece) : {}) };
}
