/**
 * The turn: the agent's answer streaming in and reaching the caller. This module
 * provides the machine's invoked actors (`askAgent`, `voicePrompt`,
 * `collectReply`) and keeps the answers in flight, one `ReplyStream` per call and
 * turn, which outlive the actors that look at them.
 *
 * How a reply reaches the caller follows the call's `delivery`:
 * - `pieces`: each sentence is voiced (ElevenLabs through the voice library, or
 *   read by the phone's own voice) as soon as it is complete; `voicePrompt` hands
 *   the machine the next voiced pieces, and the transport plays them.
 * - `streamed`: the agent's text goes out chunk by chunk, as it arrives, to the
 *   call's text sink (the ConversationRelay socket), and the phone speaks it; an
 *   interrupt stops the actor, which disposes the stream and so closes the agent's
 *   connection.
 */
import type { Logger } from 'pino';
import { fromPromise } from 'xstate';
import {
  errorMessage,
  type AgentTurnInput,
  type AgentTurnOutput,
  type PromptPiece,
  type ReplyProgress,
  type VoiceFailure,
  type VoiceInput,
  type VoiceOutput,
  type WrittenReply,
} from '../../machines/call.machine.ts';
import { AgentError, type Agent } from '../agent/agent.ts';
import type { PieceMode } from '../speech/speakable-pieces.ts';
import type { VoiceLibrary } from '../speech/voice-library.ts';
import { phraseAudioPath, pieceKey, replyAudioId, replyAudioPath } from './audio-address.ts';
import { ReplyStream } from './reply-stream.ts';

/** Where streamed text goes for a call: its transport's open connection to the caller. */
export interface TextSink {
  /** One chunk of the reply as the agent wrote it; `last` ends the reply. */
  text(token: string, last: boolean): void;
}

export interface TurnOptions {
  agent: Agent;
  /** Absent: prompts are read by the phone's own voice. */
  voice: VoiceLibrary | undefined;
  log: Logger;
  now: () => number;
  /** The turn's bound, first chunk to last, whatever the agent adapter does. */
  agentTimeoutMs: number;
  /** How a reply is cut for voicing: `sentences` voices it as the agent writes; `whole` waits for all of it. */
  replyPieces: PieceMode;
  /** The open text sink of a call whose replies are streamed, if it has one in this process. */
  textSink(callSid: string): TextSink | undefined;
}

/** How long a finished reply stays in memory for a caller who never comes back for the rest. */
const REPLY_KEPT_MS = 60_000;
const LOST_ANSWER = 'agent: the rest of the answer was lost and, asked again, the agent answered differently';

export class Turns {
  readonly #options: TurnOptions;
  /** Replies streaming from the agent, by call and turn. */
  readonly #replies = new Map<string, ReplyStream>();

  constructor(options: TurnOptions) {
    this.#options = options;
  }

  /** The machine's actors, for `machine.provide({ actors })`. */
  actors() {
    return {
      askAgent: fromPromise<AgentTurnOutput, AgentTurnInput>(({ input, signal }) => this.#askAgent(input, signal)),
      voicePrompt: fromPromise<VoiceOutput, VoiceInput>(({ input, signal }) => this.#voicePrompt(input, signal)),
      collectReply: fromPromise<WrittenReply, ReplyProgress>(({ input, signal }) => this.#collectReply(input, signal)),
    };
  }

  /** Answers in flight in this process. */
  get inFlight(): number {
    return this.#replies.size;
  }

  /**
   * Starts the agent's answer streaming (or joins the one already streaming for
   * this turn) and returns as soon as there is enough to start with: its first
   * piece to voice, or, streamed, its first chunk.
   */
  async #askAgent(input: AgentTurnInput, signal: AbortSignal): Promise<AgentTurnOutput> {
    const { key, stream } = this.#replyFor(input, 0);
    const streamed = input.delivery === 'streamed';
    try {
      await stream.until(() => (streamed ? stream.chunks.length > 0 : stream.pieces.length > 0) || stream.finished, signal);
    } catch (error) {
      // Nobody waits for this answer any more (the caller hung up, the turn moved on).
      this.#dropReply(key, stream, error);
      throw error;
    }
    const text = streamed ? stream.chunks.join('') : stream.pieces[0]?.text;
    if (!text) {
      this.#dropReply(key, stream, undefined);
      const error = stream.error ?? new AgentError('empty', 'the agent answered with no text');
      this.#options.log.warn({ callSid: input.callSid, err: error }, 'agent turn failed');
      throw error;
    }
    return { text, firstChunkAt: stream.firstChunkAt ?? this.#options.now(), at: this.#options.now() };
  }

  async #voicePrompt(input: VoiceInput, signal: AbortSignal): Promise<VoiceOutput> {
    const { now } = this.#options;
    if (input.delivery === 'streamed') {
      // The phone speaks a phrase itself when the transport renders the state.
      if (input.prompt.kind === 'phrase' || !input.reply) return { at: now() };
      return this.#streamReply(input.callSid, input.reply, signal);
    }
    if (input.prompt.kind === 'reply' && input.reply) return this.#voiceReply(input.callSid, input.reply, signal);
    const voice = this.#options.voice;
    if (!voice || input.prompt.kind !== 'phrase') return { at: now() };
    try {
      await voice.phrase(input.prompt.key, input.prompt.text, signal);
      return { audio: phraseAudioPath(input.prompt.key), at: now() };
    } catch (error) {
      this.#options.log.warn({ callSid: input.callSid, err: error }, 'speech synthesis failed; the phone reads the words instead');
      throw error;
    }
  }

  /**
   * Streamed delivery: every chunk of the answer goes to the call's text sink as it
   * arrives, then the end of the reply. Stopped (an interrupt, a hang-up), it
   * disposes the stream, which closes the agent's connection: the unheard rest is
   * never asked for.
   */
  async #streamReply(callSid: string, reply: ReplyProgress, signal: AbortSignal): Promise<VoiceOutput> {
    const { key, stream } = this.#replyFor(reply.request, 0);
    let sent = 0;
    let firstAt: number | undefined;
    try {
      for (;;) {
        await stream.until(() => stream.chunks.length > sent || stream.finished, signal);
        const sink = this.#options.textSink(callSid);
        while (sent < stream.chunks.length) {
          sink?.text(stream.chunks[sent]!, false);
          firstAt ??= this.#options.now();
          sent++;
        }
        if (stream.finished && sent >= stream.chunks.length) break;
      }
    } catch (error) {
      this.#dropReply(key, stream, error);
      throw error;
    }
    this.#options.textSink(callSid)?.text('', true);
    this.#dropReply(key, stream, undefined);
    const output: VoiceOutput = { at: this.#options.now(), pieces: [{ text: stream.chunks.join('').trim() }], more: false };
    if (firstAt !== undefined) output.firstAt = firstAt;
    if (stream.completeAt !== undefined) output.agentCompleteAt = stream.completeAt;
    const cut = cutOf(stream);
    if (cut) output.cut = cut;
    return output;
  }

  /**
   * The next pieces of a reply: waits until the first piece the caller has not
   * heard is voiced (or read by the phone, if synthesis failed), then takes every
   * voiced piece after it. Once the agent's answer is complete, it waits for all
   * that is left, so the rest plays in one document (inside the <Gather>) with no
   * round trip between pieces.
   */
  async #voiceReply(callSid: string, reply: ReplyProgress, signal: AbortSignal): Promise<VoiceOutput> {
    const { key, stream } = this.#replyFor(reply.request, reply.heard.length, reply.written);
    const from = reply.heard.length;
    await stream.until(() => stream.pieces.length > from || stream.finished, signal);
    if (!continuesHeard(stream, reply.heard)) {
      // The answer was streamed by a process that is gone; asked again, the agent said something else.
      this.#dropReply(key, stream, undefined);
      return { at: this.#options.now(), pieces: [], more: false, cut: LOST_ANSWER };
    }
    const settled = (i: number) => stream.pieces[i]?.voiced !== undefined;
    await stream.until(() => settled(from) || (stream.finished && stream.pieces.length <= from), signal);
    if (!this.#options.voice) {
      // Read by the phone, a piece is ready the moment it is complete: let text that
      // has already arrived be read before deciding what is left.
      await new Promise((resolve) => setImmediate(resolve));
      await new Promise((resolve) => setImmediate(resolve));
    }
    if (stream.finished) await stream.until(() => stream.pieces.every((_, i) => i < from || settled(i)), signal);

    const pieces: PromptPiece[] = [];
    let problem: string | undefined;
    for (let i = from; settled(i); i++) {
      const piece = stream.pieces[i]!;
      pieces.push(piece.voiced ? { text: piece.text, audio: replyAudioPath(callSid, pieceKey(reply.turn, i)) } : { text: piece.text });
      if (piece.error) problem ??= `speech: ${errorMessage(piece.error)}`;
    }
    const more = !(stream.finished && from + pieces.length >= stream.pieces.length);
    const log = this.#options.log;
    // When the agent finished, as this stream saw it (a stream from the store did not see it).
    const agentCompleteAt = stream.fromStore ? undefined : stream.completeAt;
    if (!more) {
      this.#dropReply(key, stream, undefined);
      const failed = stream.pieces.slice(from).find((p) => p.error);
      if (pieces.length > 0 && !pieces.some((p) => p.audio) && failed) {
        // None of the rest could be voiced: a speech failure, as for a reply voiced in one go.
        log.warn({ callSid, err: failed.error, turn: reply.turn }, 'speech synthesis failed; the phone reads the words instead');
        throw new UnvoicedReply(failed.error, pieces, agentCompleteAt, cutOf(stream));
      }
    }
    if (problem) log.warn({ callSid, problem, turn: reply.turn }, 'part of a reply could not be voiced as asked');
    const output: VoiceOutput = { at: this.#options.now(), pieces, more };
    if (agentCompleteAt !== undefined) output.agentCompleteAt = agentCompleteAt;
    if (problem) output.problem = problem;
    const cut = more ? undefined : cutOf(stream);
    if (cut) {
      log.warn({ callSid, cut, turn: reply.turn }, 'the agent’s answer was cut short; the caller heard it up to there');
      output.cut = cut;
    }
    return output;
  }

  /**
   * Waits for the agent to finish the answer whose first pieces the caller is
   * hearing, and hands all of it to the machine, which stores it: a PLAYED that
   * lands on another instance voices the rest from the store instead of asking the
   * agent again. It does not fail (the machine has no branch for it): an answer
   * that went wrong yields what the agent wrote, with the reason it was cut.
   */
  async #collectReply(reply: ReplyProgress, signal: AbortSignal): Promise<WrittenReply> {
    const { stream } = this.#replyFor(reply.request, reply.heard.length, reply.written);
    // Aborted when the call moves on first (PLAYED, a hang-up): the stream stays for whoever voices the rest.
    await stream.until(() => stream.finished, signal);
    if (!continuesHeard(stream, reply.heard)) return { pieces: reply.heard, completeAt: this.#options.now(), cut: LOST_ANSWER };
    const written: WrittenReply = { pieces: stream.pieces.map((p) => p.text), completeAt: stream.completeAt ?? this.#options.now() };
    const cut = cutOf(stream);
    if (cut) written.cut = cut;
    return written;
  }

  /**
   * This turn's reply stream: the one already under way in this process, or a new
   * one that skips the pieces the caller has heard (and voices the stored answer,
   * when there is one, instead of asking the agent).
   */
  #replyFor(request: AgentTurnInput, alreadyHeard: number, written?: string[]): { key: string; stream: ReplyStream } {
    const key = replyAudioId(request.callSid, pieceKey(request.turn, 0));
    return { key, stream: this.#replies.get(key) ?? this.#startReply(key, request, alreadyHeard, written) };
  }

  #startReply(key: string, request: AgentTurnInput, alreadyHeard: number, written?: string[]): ReplyStream {
    const { agent, voice, agentTimeoutMs, now, replyPieces } = this.#options;
    const stream = new ReplyStream({
      agent,
      request,
      // Streamed text is spoken by the phone: nothing to synthesise.
      voice: request.delivery === 'streamed' ? undefined : voice,
      audioId: (index) => replyAudioId(request.callSid, pieceKey(request.turn, index)),
      mode: replyPieces,
      timeoutMs: agentTimeoutMs,
      now,
      alreadyHeard,
      ...(written ? { written } : {}),
      // A reply nobody comes back for (the caller hung up mid-answer) is forgotten after a while.
      onFinished: () => {
        if (this.#replies.get(key) === stream) stream.expireAfter(REPLY_KEPT_MS, () => this.#dropReply(key, stream, undefined));
      },
    });
    this.#replies.set(key, stream);
    return stream;
  }

  #dropReply(key: string, stream: ReplyStream, reason: unknown): void {
    if (this.#replies.get(key) === stream) this.#replies.delete(key);
    stream.dispose(reason);
  }
}

/** The rest of a reply could not be voiced at all: the machine has the phone read these pieces. */
class UnvoicedReply extends Error implements VoiceFailure {
  override readonly name = 'UnvoicedReply';
  readonly pieces: PromptPiece[];
  readonly agentCompleteAt: number | undefined;
  readonly cut: string | undefined;
  constructor(cause: unknown, pieces: PromptPiece[], agentCompleteAt: number | undefined, cut: string | undefined) {
    super(errorMessage(cause), { cause });
    this.pieces = pieces;
    this.agentCompleteAt = agentCompleteAt;
    this.cut = cut;
  }
}

/** The stream's pieces begin with what the caller has heard (false: it was asked again and said something else). */
function continuesHeard(stream: ReplyStream, heard: string[]): boolean {
  if (stream.finished && stream.pieces.length < heard.length) return false;
  return heard.every((text, i) => stream.pieces[i] === undefined || stream.pieces[i]!.text === text);
}

/** Why an answer with text stopped early, as the turn records it; undefined when it ended normally. */
function cutOf(stream: ReplyStream): string | undefined {
  if (!stream.finished || stream.error === undefined || (stream.pieces.length === 0 && stream.chunks.length === 0)) return undefined;
  return `agent: ${errorMessage(stream.error)}; the answer was cut there`;
}
