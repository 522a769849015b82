/**
 * One agent answer on its way to the caller's ear: the agent's text streamed in,
 * cut into speakable pieces (src/speech/speakable-pieces.ts), each piece voiced as
 * soon as it is complete while the agent writes on.
 *
 * It lives outside the call machine on purpose: the machine is persisted and
 * pure, this is in-flight I/O. The engine keeps one per call and turn; the
 * machine's `askAgent` actor waits on it for the first piece and each `voicePrompt`
 * actor for the next ones, so a stream outlives the actors that look at it.
 *
 * Pieces that arrive together (a burst of buffered text, or a fast agent whose
 * whole answer comes in one read) are merged into one piece: no reason to cut what
 * can be voiced in one go. Pieces are voiced one at a time, in order, so a call
 * takes at most one of the process's synthesis slots (voice-library.ts: ElevenLabs
 * limits concurrency per plan) and a long answer never queues ahead of another
 * caller's first piece; each piece is voiced with the reply's own text before it
 * and, when already known, the text after it (`textAround`), so the pieces sound
 * like one utterance.
 *
 * A stream can also start from an answer the store already holds (`written`, put
 * there by the instance that streamed it): its pieces are voiced the same way and
 * the agent is not asked again.
 *
 * @see https://elevenlabs.io/docs/api-reference/text-to-speech/stream (previous_text, next_text)
 */
import { AgentError, type Agent, type AgentRequest } from '../agent/agent.ts';
import { LinkedAbort } from '../http-client/linked-abort.ts';
import { SpeakablePieces, textAround, type PieceMode } from '../speech/speakable-pieces.ts';
import type { VoiceLibrary } from '../speech/voice-library.ts';

export interface ReplyPiece {
  index: number;
  text: string;
  /** Unset while being voiced; true once its audio is in the voice library; false: the phone reads it. */
  voiced?: boolean;
  /** Why it could not be voiced. */
  error?: unknown;
}

export interface ReplyStreamOptions {
  agent: Agent;
  request: AgentRequest;
  /** Absent: no piece is voiced, the phone reads them all. */
  voice: VoiceLibrary | undefined;
  /** The voice library id of piece `index`, which the audio route serves. */
  audioId(index: number): string;
  mode: PieceMode;
  /** The whole answer, first chunk to last. */
  timeoutMs: number;
  now(): number;
  /** Pieces the caller already heard (a stream started again elsewhere): not voiced again. */
  alreadyHeard?: number;
  /** The whole answer, already written, piece by piece: voiced without asking the agent. */
  written?: string[];
  /** Called once the agent's answer has ended (or failed). */
  onFinished?: () => void;
}

/**
 * Longest answer kept, in characters: about four minutes of speech. Past it the
 * answer is cut there (a call's record and the history sent back to the agent stay
 * bounded; see LIMITS.turns for the number of turns).
 */
export const MAX_REPLY_CHARS = 4_000;

export class ReplyStream {
  readonly pieces: ReplyPiece[] = [];
  /** The agent's text exactly as it arrived, chunk by chunk (streamed delivery forwards these). */
  readonly chunks: string[] = [];
  firstChunkAt: number | undefined;
  /** When the agent's answer ended (or failed). */
  completeAt: number | undefined;
  /** The agent failed; the pieces before the failure stand. */
  error: unknown;
  finished = false;
  /** The pieces came from the store, not from the agent (`completeAt` is then only when this stream began). */
  readonly fromStore: boolean;
  readonly #options: ReplyStreamOptions;
  /** Stops the agent's answer: disposed, or past the timeout (a `TimeoutError`, reported as one). */
  readonly #link = new LinkedAbort();
  readonly #waiters = new Set<() => void>();
  /** Complete pieces not yet added: they wait one turn of the event loop for others arriving with them. */
  #arriving: string[] = [];
  #voicing: Promise<void> = Promise.resolve();
  #expiry: ReturnType<typeof setTimeout> | undefined;

  constructor(options: ReplyStreamOptions) {
    this.#options = options;
    this.fromStore = options.written !== undefined;
    void this.#run();
  }

  /** Nobody will listen to (the rest of) this answer: stop asking the agent, forget the expiry. */
  dispose(reason: unknown): void {
    clearTimeout(this.#expiry);
    if (!this.finished) this.#link.abort(reason);
  }

  /** Calls `onExpire` after `ms` unless the stream is disposed first (a caller who never came back). */
  expireAfter(ms: number, onExpire: () => void): void {
    clearTimeout(this.#expiry);
    this.#expiry = setTimeout(onExpire, ms);
    this.#expiry.unref();
  }

  /** Resolves once `ready()` holds (looked at after every change), rejects if `signal` aborts first. */
  until(ready: () => boolean, signal: AbortSignal): Promise<void> {
    if (ready()) return Promise.resolve();
    if (signal.aborted) return Promise.reject(signal.reason);
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!ready()) return;
        done();
        resolve();
      };
      const onAbort = () => {
        done();
        reject(signal.reason);
      };
      const done = () => {
        this.#waiters.delete(check);
        signal.removeEventListener('abort', onAbort);
      };
      this.#waiters.add(check);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  async #run(): Promise<void> {
    const { agent, request, mode, timeoutMs, now, written } = this.#options;
    if (written) {
      // After the constructor has returned, so `onFinished` sees the stream where its owner keeps it.
      await Promise.resolve();
      for (const text of written) this.#add(text);
      this.#finish();
      return;
    }
    const pieces = new SpeakablePieces(mode);
    this.#link.deadline(timeoutMs, `no complete answer from the agent within ${timeoutMs} ms`);
    try {
      let chars = 0;
      for await (const whole of agent.reply(request, this.#link.signal)) {
        this.firstChunkAt ??= now();
        const chunk = whole.slice(0, MAX_REPLY_CHARS - chars);
        chars += chunk.length;
        this.chunks.push(chunk);
        this.#arrive(pieces.push(chunk));
        this.#changed();
        if (chars >= MAX_REPLY_CHARS) throw new AgentError('broken', `the answer ran past ${MAX_REPLY_CHARS} characters`);
      }
      this.#arriving.push(...pieces.end());
    } catch (error) {
      this.error = error;
      // What the agent said before it failed is kept when its connection broke (it
      // stopped talking), or when the caller is already hearing the start of it; a
      // few words before a timeout are not worth the wait, the caller hears an apology.
      const broke = error instanceof AgentError && error.failure === 'broken';
      if (broke || this.pieces.length > 0 || this.#arriving.length > 0) this.#arriving.push(...pieces.end());
    } finally {
      this.#link.dispose();
    }
    this.#addArrived();
    this.#finish();
  }

  #finish(): void {
    this.finished = true;
    this.completeAt = this.#options.now();
    this.#changed();
    this.#options.onFinished?.();
  }

  #arrive(texts: string[]): void {
    if (texts.length === 0) return;
    if (this.#arriving.length === 0) setImmediate(() => this.#addArrived());
    this.#arriving.push(...texts);
  }

  #addArrived(): void {
    if (this.#arriving.length === 0) return;
    const text = this.#arriving.join(' ');
    this.#arriving = [];
    this.#add(text);
  }

  #add(text: string): void {
    const piece: ReplyPiece = { index: this.pieces.length, text };
    this.pieces.push(piece);
    const { voice, alreadyHeard = 0 } = this.#options;
    if (!voice) piece.voiced = false;
    else if (piece.index < alreadyHeard) piece.voiced = true;
    else this.#voicing = this.#voicing.then(() => this.#voice(voice, piece));
    this.#changed();
  }

  async #voice(voice: VoiceLibrary, piece: ReplyPiece): Promise<void> {
    const around = textAround(this.pieces.map((p) => p.text), piece.index);
    try {
      await voice.replyPiece(this.#options.audioId(piece.index), { text: piece.text, ...around });
      piece.voiced = true;
    } catch (error) {
      piece.voiced = false;
      piece.error = error;
    }
    this.#changed();
  }

  #changed(): void {
    for (const check of [...this.#waiters]) check();
  }
}
