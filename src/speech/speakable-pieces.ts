/**
 * Cuts an agent's answer, as it streams in, into pieces that can be voiced on
 * their own: sentences, or clauses of a long sentence. The first piece is what the
 * caller waits for, so it may end at a clause sooner than later pieces do; later
 * pieces play while the rest is written, so they can be whole sentences, which
 * sound better.
 *
 * Pure and incremental: `push` takes text as it arrives and returns the pieces it
 * completed; `end` returns the rest. A boundary counts only once the character
 * after it has arrived, so "3.5" or a sentence end at the edge of a chunk is never
 * cut early. Pieces are trimmed, with runs of whitespace made one space, so the
 * pieces joined with spaces give back the answer as the engine stores it.
 *
 * `whole` never cuts: the answer is one piece, voiced once it is complete (the
 * way the service worked before it streamed).
 */

export type PieceMode = 'sentences' | 'whole';

export interface PieceRules {
  /** The first piece may end at a clause (, ; : — –) once it has this many words. */
  firstClauseWords: number;
  /** Later pieces end at a clause only once they are this long; shorter ones wait for the sentence's end. */
  clauseWords: number;
  /** No piece grows longer than this many words: without any boundary it is cut between words. */
  maxWords: number;
}

export const DEFAULT_PIECE_RULES: PieceRules = { firstClauseWords: 6, clauseWords: 20, maxWords: 40 };

/** Words that end in a period without ending the sentence. */
const ABBREVIATIONS = new Set(['mr', 'mrs', 'ms', 'dr', 'prof', 'st', 'vs', 'etc', 'e.g', 'i.e', 'jr', 'sr', 'approx', 'inc', 'ltd', 'co', 'mt', 'ft', 'ave']);
const SENTENCE_END = /[.!?…]["'”’)\]]*$/;
const CLAUSE_END = /[,;:—–]["'”’)\]]*$/;

export class SpeakablePieces {
  readonly #mode: PieceMode;
  readonly #rules: PieceRules;
  #buffer = '';
  #emitted = 0;
  /** Whitespace before this index of the buffer has been looked at. */
  #scanned = 0;
  /** Words of the piece being built, up to `#scanned`. */
  #words = 0;

  constructor(mode: PieceMode = 'sentences', rules: PieceRules = DEFAULT_PIECE_RULES) {
    this.#mode = mode;
    this.#rules = rules;
  }

  /** Takes the next chunk of the answer; returns the pieces it completed, in order. */
  push(text: string): string[] {
    this.#buffer += text;
    if (this.#mode === 'whole') return [];
    const pieces: string[] = [];
    for (let cut = this.#nextCut(); cut !== undefined; cut = this.#nextCut()) {
      const piece = tidy(this.#buffer.slice(0, cut));
      this.#buffer = this.#buffer.slice(cut);
      this.#scanned = 0;
      this.#words = 0;
      if (piece !== '') {
        pieces.push(piece);
        this.#emitted++;
      }
    }
    return pieces;
  }

  /** The answer is complete: whatever is left, as the last piece. */
  end(): string[] {
    const piece = tidy(this.#buffer);
    this.#buffer = '';
    this.#scanned = 0;
    this.#words = 0;
    if (piece === '') return [];
    this.#emitted++;
    return [piece];
  }

  /**
   * Where the next piece ends (an index into the buffer, at the whitespace after
   * the boundary), if a boundary is complete: a sentence end or a line break, a
   * clause end in a piece that is long enough, or the longest a piece may be.
   * Each whitespace is looked at once, as it arrives, with the word before it.
   */
  #nextCut(): number | undefined {
    const clauseWords = this.#emitted === 0 ? this.#rules.firstClauseWords : this.#rules.clauseWords;
    const buffer = this.#buffer;
    for (let i = this.#scanned; i < buffer.length; i++) {
      const char = buffer[i]!;
      if (!isSpace(char)) continue;
      this.#scanned = i + 1;
      if (i === 0 || isSpace(buffer[i - 1]!)) {
        if (char === '\n' && this.#words > 0) return i;
        continue;
      }
      let start = i - 1;
      while (start > 0 && !isSpace(buffer[start - 1]!)) start--;
      const word = buffer.slice(start, i);
      this.#words++;
      if (char === '\n' || (SENTENCE_END.test(word) && !isAbbreviation(word) && !(this.#words === 1 && isListNumber(word)))) return i;
      if (this.#words >= clauseWords && CLAUSE_END.test(word)) return i;
      if (this.#words >= this.#rules.maxWords) return i;
    }
    return undefined;
  }
}

function isSpace(char: string): boolean {
  return char === ' ' || char === '\n' || char === '\t' || char === '\r' || char === '\u00a0';
}

function isAbbreviation(word: string): boolean {
  if (!word.endsWith('.')) return false;
  const bare = word.slice(0, -1).replace(/^["'“‘(\[]+/, '').toLowerCase();
  // A single letter is an initial ("J. Smith").
  return ABBREVIATIONS.has(bare) || /^[a-z]$/.test(bare);
}

/** "1." alone is the number of a list item, not a sentence. */
function isListNumber(word: string): boolean {
  return /^\d{1,3}[.)]$/.test(word);
}

function tidy(text: string): string {
  return text.replace(/\s+/g, ' ').trim();
}

/** At most about this much of the reply before a piece goes with it: enough to carry the intonation on, without resending the whole answer with every piece. */
const MAX_PREVIOUS_CHARS = 1_000;

/**
 * The words around piece `index` of a reply, as ElevenLabs' `previous_text` and
 * `next_text` define them ("the text that came before / comes after the text of
 * the current request", in the same voice): the reply's own earlier pieces, the
 * most recent whole ones up to about 1,000 characters (none for the first piece),
 * and the next piece when it is already known. Never the caller's words: they were
 * not spoken in this voice, and they have no reason to leave for a third party.
 *
 * @see elevenlabs/elevenlabs-docs fern/apis/api/openapi.json (Body_Text_to_speech_streaming_v1_text_to_speech__voice_id__stream_post)
 */
export function textAround(pieces: readonly string[], index: number): { previousText?: string; nextText?: string } {
  const before: string[] = [];
  let chars = 0;
  for (let i = index - 1; i >= 0; i--) {
    const piece = pieces[i]!;
    if (before.length > 0 && chars + piece.length > MAX_PREVIOUS_CHARS) break;
    before.unshift(piece);
    chars += piece.length + 1;
  }
  const next = pieces[index + 1];
  return {
    ...(before.length > 0 ? { previousText: before.join(' ') } : {}),
    ...(next !== undefined ? { nextText: next } : {}),
  };
}
