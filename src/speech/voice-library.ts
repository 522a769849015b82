/**
 * The audio the caller hears, kept in this process so Twilio's `<Play>` fetch is
 * served from memory: fixed phrases (greeting, apology, goodbye, hold) are
 * synthesised once per process and kept; replies are kept in a bounded
 * least-recently-used cache. A fetch that misses (another instance synthesised it,
 * or it was evicted) synthesises the same text again.
 *
 * Synthesis is deduplicated: concurrent requests for the same text share one call.
 * Every synthesis of the process goes through one set of slots (synthesis-slots.ts),
 * so the service never asks ElevenLabs for more at once than the plan allows, and a
 * caller's audio goes before the start-up warm-up. Each synthesis has a deadline
 * from when it is first asked, its wait for a slot included: past it, it fails and
 * the phone's own voice says the words.
 */
import { isTimeout, LinkedAbort } from '../http-client/linked-abort.ts';
import { SpeechError, type Speech, type SpeechRequest, type SynthesisedAudio } from './speech.ts';
import { SynthesisSlots, type SlotTicket, type SynthesisPriority } from './synthesis-slots.ts';

export interface VoiceLibraryOptions {
  speech: Speech;
  /** Distinguishes voices/models/formats so a change of voice never serves old audio. */
  voiceKey: string;
  maxReplyBytes?: number;
  /** Syntheses running at once, at most (the ElevenLabs plan's concurrency limit); the others wait in order. */
  maxConcurrent?: number;
  /** Longest a synthesis may take from when it is first asked, its wait for a slot included. */
  deadlineMs?: number;
}

interface Phrase {
  audio: Promise<SynthesisedAudio>;
  ticket: SlotTicket;
}

export class VoiceLibrary {
  readonly #speech: Speech;
  readonly #voiceKey: string;
  readonly #phrases = new Map<string, Phrase>();
  readonly #readyPhrases = new Map<string, SynthesisedAudio>();
  /** Ready reply audio by `${voiceKey}|${id}`, least recently used first, with the text it says. */
  readonly #replies = new Map<string, { text: string; audio: SynthesisedAudio }>();
  readonly #pending = new Map<string, Promise<SynthesisedAudio>>();
  readonly #maxReplyBytes: number;
  readonly #slots: SynthesisSlots;
  readonly #deadlineMs: number;
  #replyBytes = 0;

  constructor(options: VoiceLibraryOptions) {
    this.#speech = options.speech;
    this.#voiceKey = options.voiceKey;
    this.#maxReplyBytes = options.maxReplyBytes ?? 64 * 1024 * 1024;
    this.#slots = new SynthesisSlots(options.maxConcurrent ?? 6);
    this.#deadlineMs = options.deadlineMs ?? 2_500;
  }

  /** A fixed phrase a caller is waiting for, synthesised at most once per process (a failure is retried next time). */
  phrase(name: string, text: string, signal?: AbortSignal): Promise<SynthesisedAudio> {
    const audio = this.#phrase(name, text, 'live');
    return signal ? abortable(audio, signal) : audio;
  }

  /**
   * Synthesises the fixed phrases ahead of the first call, behind any caller's
   * audio; resolves with how many could not be synthesised (they are tried again
   * when a call needs them).
   */
  async warmUp(phrases: Readonly<Record<string, string>>): Promise<number> {
    const results = await Promise.allSettled(Object.entries(phrases).map(([name, text]) => this.#phrase(name, text, 'warm-up')));
    return results.filter((result) => result.status === 'rejected').length;
  }

  #phrase(name: string, text: string, priority: SynthesisPriority): Promise<SynthesisedAudio> {
    const key = `${this.#voiceKey}|phrase|${name}|${text}`;
    let phrase = this.#phrases.get(key);
    if (!phrase) {
      const ticket: SlotTicket = { priority };
      phrase = { audio: this.#synthesise({ text }, ticket), ticket };
      this.#phrases.set(key, phrase);
      phrase.audio.then(
        (ready) => this.#readyPhrases.set(key, ready),
        () => this.#phrases.delete(key),
      );
    } else if (priority === 'live') {
      // Still waiting behind callers' audio as warm-up: a caller needs it now.
      phrase.ticket.priority = 'live';
    }
    return phrase.audio;
  }

  /** The phrase's audio if it is already synthesised, without waiting. */
  phraseIfReady(name: string, text: string): SynthesisedAudio | undefined {
    return this.#readyPhrases.get(`${this.#voiceKey}|phrase|${name}|${text}`);
  }

  /** A reply's audio, keyed by call and prompt so the audio route can find it. */
  reply(id: string, text: string, previousText: string | undefined, signal?: AbortSignal): Promise<SynthesisedAudio> {
    return this.replyPiece(id, previousText === undefined ? { text } : { text, previousText }, signal);
  }

  /**
   * A piece of a reply, keyed by its id and text (the words around it help the
   * voice but do not change what is said, so they are not part of the key).
   */
  async replyPiece(id: string, request: SpeechRequest, signal?: AbortSignal): Promise<SynthesisedAudio> {
    const key = `${this.#voiceKey}|reply|${id}|${request.text}`;
    const cached = this.#ready(id);
    if (cached && cached.text === request.text) return cached.audio;
    let pending = this.#pending.get(key);
    if (!pending) {
      pending = this.#synthesise(request, { priority: 'live' }).then((audio) => {
        this.#keep(id, request.text, audio);
        return audio;
      });
      this.#pending.set(key, pending);
      void pending.then(
        () => this.#pending.delete(key),
        () => this.#pending.delete(key),
      );
    }
    return signal ? abortable(pending, signal) : pending;
  }

  async #synthesise(request: SpeechRequest, ticket: SlotTicket): Promise<SynthesisedAudio> {
    const askedAt = Date.now();
    let startedAt: number | undefined;
    using link = new LinkedAbort();
    link.deadline(this.#deadlineMs);
    try {
      return await this.#slots.run(ticket, link.signal, () => {
        startedAt = Date.now();
        return this.#speech.synthesise(request, link.signal);
      });
    } catch (error) {
      if (!isTimeout(link.signal.reason)) throw error;
      const waited = (startedAt ?? Date.now()) - askedAt;
      throw new SpeechError(`no audio within ${this.#deadlineMs} ms of asking (${waited} ms of it waiting for a free synthesis slot)`, { cause: error });
    }
  }

  /**
   * A reply's audio if this process has it ready, by id alone: the audio route
   * serves it without reading the call from the store to learn its text.
   */
  replyIfReady(id: string): SynthesisedAudio | undefined {
    return this.#ready(id)?.audio;
  }

  #ready(id: string): { text: string; audio: SynthesisedAudio } | undefined {
    const key = `${this.#voiceKey}|${id}`;
    const entry = this.#replies.get(key);
    if (entry) {
      // Most recently used goes last.
      this.#replies.delete(key);
      this.#replies.set(key, entry);
    }
    return entry;
  }

  #keep(id: string, text: string, audio: SynthesisedAudio) {
    if (audio.bytes.length > this.#maxReplyBytes) return;
    const key = `${this.#voiceKey}|${id}`;
    const replaced = this.#replies.get(key);
    if (replaced) {
      this.#replies.delete(key);
      this.#replyBytes -= replaced.audio.bytes.length;
    }
    this.#replies.set(key, { text, audio });
    this.#replyBytes += audio.bytes.length;
    for (const [oldest, old] of this.#replies) {
      if (this.#replyBytes <= this.#maxReplyBytes) break;
      this.#replies.delete(oldest);
      this.#replyBytes -= old.audio.bytes.length;
    }
  }
}

/** Lets one waiter give up without cancelling the shared synthesis. */
function abortable<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}
