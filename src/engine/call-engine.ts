/**
 * The call engine: for each webhook, load the call, apply the event, commit, and
 * hand back a view of the state for the transport to render.
 *
 * Order of work, so that a crash loses nothing Twilio was told and two webhooks can
 * never both commit from one revision:
 *
 * 1. Load the stored call. A request already answered (same idempotency key) gets
 *    the stored answer again, with no agent or speech call.
 * 2. Compute the next state with the machine's pure transition (`PureSteps`): no
 *    effect runs yet.
 * 3. Commit it with compare-and-set on the revision. Losing means another webhook
 *    got there first: reload and start over (or replay its answer).
 * 4. Only the winner runs the effects: it restores an actor from the committed
 *    snapshot, which starts the invoked agent / speech actors, and waits until the
 *    machine settles in a renderable state, or until the webhook deadline, when it
 *    sends HOLD and the caller is kept on the line.
 * 5. The settled state is committed (with the rendered answer) before it is
 *    returned. An actor still working after its webhook answered stays in this
 *    process ("live") and commits when it settles; the next webhook (`/continue`)
 *    picks the result up.
 *
 * Instances share the work through a lease: while an actor works, its instance
 * records itself as the call's `worker` and renews that every LEASE_RENEW_MS. A
 * webhook landing on another instance meanwhile waits for the owner's result (and
 * answers with a hold if it takes longer than the webhook deadline) instead of
 * running the agent again. A working state whose lease has lapsed was left by a
 * process that died: the engine adopts it (restoring restarts the invoked actor).
 *
 * A renderable state can have work of its own going on after its webhook has
 * answered (`replying` stores the agent's whole answer once it is written): the
 * actor stays live and keeps the lease until that work is done and committed. A
 * webhook on another instance that needs the result (Twilio's CONTINUE) waits for
 * it as for a working state; one that changes nothing answers without committing,
 * so the owner's work is not made stale.
 *
 * @see https://github.com/statelyai/xstate/blob/main/packages/core/src/transition.ts
 * @see https://github.com/statelyai/xstate/issues/5331 (why deadlines live in context)
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import {
  createActor,
  fromPromise,
  waitFor,
  type Actor,
  type AnyActorScope,
  type SnapshotFrom,
} from 'xstate';
import {
  callMachine,
  errorMessage,
  stateName,
  type AgentTurnInput,
  type AgentTurnOutput,
  type CallContext,
  type CallEvent,
  type CallInput,
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
import type { CallRecord, CallStore, StoredCall } from '../store/call-store.ts';
import { ReplyStream } from './reply-stream.ts';

export interface CallView {
  state: string;
  context: CallContext;
  /**
   * The caller is kept on hold whatever the state, while another instance works on
   * the call; `continuing`: Twilio's CONTINUE still has to be applied, so the hold's
   * redirect says so again.
   */
  hold?: { continuing: boolean };
}

export interface EngineOptions {
  store: CallStore;
  agent: Agent;
  /** Absent: prompts are read by the phone's own voice. */
  voice: VoiceLibrary | undefined;
  log: Logger;
  now?: () => number;
  webhookDeadlineMs: number;
  agentTimeoutMs: number;
  /** How a reply is cut for voicing: `sentences` (default) voices it as the agent writes; `whole` waits for all of it. */
  replyPieces?: PieceMode;
  /** Transport's renderer; the engine stores what it renders for replays. */
  render(view: CallView): string;
}

export interface EngineRequest {
  /** Twilio's I-Twilio-Idempotency-Token, or another key that repeats on retries. */
  key?: string | undefined;
}

export type EngineAnswer =
  | { kind: 'answer'; body: string; view: CallView }
  | { kind: 'replay'; body: string }
  | { kind: 'unknown' };

export interface CallStartInfo {
  callSid: string;
  from: string;
  to: string;
}

type CallMachine = typeof callMachine;
type CallSnapshot = SnapshotFrom<CallMachine>;
type CallActor = Actor<CallMachine>;

interface Live {
  actor: CallActor;
  revision: number;
  /** The snapshot stored at `revision` by this instance, if it came from this actor. */
  committed?: CallSnapshot;
  renewal?: ReturnType<typeof setInterval>;
}

const MAX_ATTEMPTS = 4;
/** After HOLD, a moment for a fallback (already-synthesised apology) to settle. */
const AFTER_HOLD_MS = 300;
/** How long a worker's claim on a turn holds without renewal, and how often it renews. */
export const LEASE_MS = 4_000;
const LEASE_RENEW_MS = 1_500;
/** How often a webhook waiting on another instance's turn looks at the store. */
const OWNER_POLL_MS = 50;
/** How long a finished reply stays in memory for a caller who never comes back for the rest. */
const REPLY_KEPT_MS = 60_000;

export class CallEngine {
  readonly machine: CallMachine;
  readonly #options: EngineOptions;
  readonly #now: () => number;
  readonly #live = new Map<string, Live>();
  readonly #locks = new Map<string, Promise<unknown>>();
  /** Replies streaming from the agent into speech, by call and turn (see reply-stream.ts). */
  readonly #replies = new Map<string, ReplyStream>();
  readonly #pure: PureSteps;
  /** This engine's name in leases. */
  readonly instanceId = randomUUID();

  constructor(options: EngineOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
    this.machine = callMachine.provide({
      actors: {
        askAgent: fromPromise<AgentTurnOutput, AgentTurnInput>(({ input, signal }) => this.#askAgent(input, signal)),
        voicePrompt: fromPromise<VoiceOutput, VoiceInput>(({ input, signal }) => this.#voicePrompt(input, signal)),
        collectReply: fromPromise<WrittenReply, ReplyProgress>(({ input, signal }) => this.#collectReply(input, signal)),
      },
    });
    this.#pure = new PureSteps(this.machine);
  }

  /** `POST /voice`: a new call (or Twilio retrying the first webhook). */
  start(call: CallStartInfo, request: EngineRequest): Promise<EngineAnswer> {
    return this.#step(call.callSid, request, undefined, call);
  }

  /** Any later webhook: an event for the machine, or none to pick up where it is. */
  handle(callSid: string, event: CallEvent | undefined, request: EngineRequest): Promise<EngineAnswer> {
    return this.#step(callSid, request, event, undefined);
  }

  /** Calls with an actor still working in this process (agent or speech under way). */
  get liveCalls(): number {
    return this.#live.size;
  }

  /** Waits for every live actor to settle and commit, up to `timeoutMs` (graceful shutdown). */
  async drain(timeoutMs: number): Promise<void> {
    const until = this.#now() + timeoutMs;
    while (this.#live.size > 0 && this.#now() < until) {
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  }

  stop(): void {
    for (const [callSid, live] of this.#live) this.#dropLive(callSid, live);
  }

  #step(
    callSid: string,
    request: EngineRequest,
    event: CallEvent | undefined,
    start: CallStartInfo | undefined,
  ): Promise<EngineAnswer> {
    // One deadline for the whole webhook, whatever it waits on (this call's lock,
    // another instance's turn, the agent) and however often it reloads.
    const deadline = this.#now() + this.#options.webhookDeadlineMs;
    return this.#withLock(callSid, async () => {
      for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
        const answer = await this.#attempt(callSid, request, event, start, deadline);
        if (answer === 'reload') {
          attempt--; // the owner finished its turn: not a conflict, just look again
          continue;
        }
        if (answer !== 'conflict') return answer;
        this.#options.log.debug({ callSid, attempt }, 'commit lost to a concurrent webhook; reloading');
      }
      throw new Error(`call ${callSid}: gave up after ${MAX_ATTEMPTS} conflicting commits`);
    });
  }

  async #attempt(
    callSid: string,
    request: EngineRequest,
    event: CallEvent | undefined,
    start: CallStartInfo | undefined,
    deadline: number,
  ): Promise<EngineAnswer | 'conflict' | 'reload'> {
    const stored = await this.#options.store.load(callSid);
    const replay = request.key ? stored?.responses[request.key] : undefined;
    if (replay !== undefined) return { kind: 'replay', body: replay };
    // Words brought back by a recovery redirect (their `at` is when they were first
    // heard) that a turn has already taken: that webhook got as far as claiming the
    // turn, here or on another instance. Pick the turn up instead of asking the agent
    // the same question twice. Checked here, after the load and under the call's
    // lock, so it holds however the retry and the first attempt interleave.
    const heardAt = event?.type === 'SPEECH' ? event.at : undefined;
    if (heardAt !== undefined && stored?.record.path.some((step) => step.event === 'SPEECH' && step.at === heardAt)) {
      event = undefined;
    }

    let live = this.#live.get(callSid);
    if (live && live.revision !== stored?.revision) {
      // Another instance moved the call on: our actor's work is stale.
      this.#dropLive(callSid, live);
      live = undefined;
    }
    if (live) {
      if (event) live.actor.send(event);
      return this.#settleAndCommit(callSid, live, request, deadline);
    }

    let current: CallSnapshot;
    let next: CallSnapshot;
    if (!stored) {
      if (!start) return { kind: 'unknown' };
      current = next = this.#pure.initial({
        ...start,
        at: this.#now(),
        agentTimeoutMs: this.#options.agentTimeoutMs,
      });
    } else {
      if (stored.snapshot === null) return { kind: 'unknown' };
      current = this.machine.resolveState(stored.snapshot as Parameters<CallMachine['resolveState']>[0]);
      next = event ? this.#pure.next(current, event) : current;
      const worker = stored.record.worker;
      const ownedElsewhere = worker !== undefined && worker.instance !== this.instanceId && worker.until > this.#now();
      if (isWorking(current) && (next === current || isWorking(next))) {
        if (ownedElsewhere) return this.#waitForOwner(stored, current, deadline, event);
        return this.#adopt(stored, event, request, deadline);
      }
      if (ownedElsewhere) {
        // The owner is finishing work in the background (the rest of a reply).
        if (isWorking(next)) return this.#waitForOwner(stored, current, deadline, event);
        if (next === current) {
          // Nothing changes: answer without a commit, which would make the owner's work stale.
          const view = viewOf(current);
          return { kind: 'answer', body: this.#options.render(view), view };
        }
      }
    }

    const expectedRevision = stored?.revision ?? 0;
    if (!isWorking(next)) {
      const view = viewOf(next);
      const body = this.#options.render(view);
      // Nothing changed; still, with a key, the answer is stored (at the cost of a
      // commit) so that a retry gets this very TwiML, audio-link expiry included.
      if (stored && next === current && !request.key) return { kind: 'answer', body, view };
      const committed = await this.#commit(callSid, expectedRevision, next, request, body);
      return committed === undefined ? 'conflict' : { kind: 'answer', body, view };
    }

    // The event starts work (agent, speech). Claim the turn first, so only one
    // webhook ever runs it; then run it from the committed snapshot.
    const persisted = this.machine.getPersistedSnapshot(next);
    const claimed = await this.#commit(callSid, expectedRevision, next, {}, undefined, persisted);
    if (claimed === undefined) return 'conflict';
    return this.#settleAndCommit(callSid, this.#goLive(callSid, persisted, claimed), request, deadline);
  }

  /**
   * Another live instance is running this call's turn: wait for its result rather
   * than run the agent twice. Past the webhook deadline the caller is kept on hold
   * (nothing is committed; the owner still owns the turn).
   */
  async #waitForOwner(
    stored: StoredCall,
    current: CallSnapshot,
    deadline: number,
    event: CallEvent | undefined,
  ): Promise<EngineAnswer | 'reload'> {
    // The webhook's deadline, not a fresh one: the owner's lease renewals reload
    // this wait every LEASE_RENEW_MS, and must not keep Twilio waiting past it.
    while (this.#now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, OWNER_POLL_MS));
      const latest = await this.#options.store.load(stored.callSid);
      if (!latest || latest.revision !== stored.revision) return 'reload';
    }
    const view = viewOf(current);
    const held: CallView = {
      ...view,
      context: { ...view.context, holds: view.context.holds + 1 },
      hold: { continuing: event?.type === 'CONTINUE' },
    };
    return { kind: 'answer', body: this.#options.render(held), view: held };
  }

  /** A working state nobody is running any more: its process died. Restoring restarts the work. */
  #adopt(stored: StoredCall, event: CallEvent | undefined, request: EngineRequest, deadline: number) {
    this.#options.log.warn({ callSid: stored.callSid, state: stored.record.state }, 'resuming a call left mid-turn');
    const live = this.#goLive(stored.callSid, stored.snapshot, stored.revision);
    if (event) live.actor.send(event);
    return this.#settleAndCommit(stored.callSid, live, request, deadline);
  }

  #goLive(callSid: string, snapshot: unknown, revision: number): Live {
    // Input only seeds a new call; a restored actor takes everything from its snapshot.
    const actor = createActor(this.machine, { snapshot: snapshot as CallSnapshot, input: undefined as never });
    const live: Live = { actor, revision };
    this.#live.set(callSid, live);
    actor.subscribe({
      next: (snapshot) => {
        if (!isWorking(snapshot)) void this.#flushLive(callSid, live);
      },
      error: (error) => this.#options.log.error({ callSid, err: error }, 'call actor failed'),
    });
    actor.start();
    live.renewal = setInterval(() => void this.#renewLease(callSid, live), LEASE_RENEW_MS);
    live.renewal.unref();
    return live;
  }

  /** Keeps this instance's claim on a turn that is still working. */
  #renewLease(callSid: string, live: Live): Promise<unknown> {
    return this.#withLock(callSid, async () => {
      if (this.#live.get(callSid) !== live) return;
      const snapshot = live.actor.getSnapshot();
      if (!needsLease(snapshot)) return;
      const revision = await this.#commit(callSid, live.revision, snapshot, {}, undefined);
      if (revision === undefined) {
        this.#options.log.warn({ callSid }, 'lost the lease on a turn: another instance moved the call on');
        this.#dropLive(callSid, live);
      } else {
        live.revision = revision;
        live.committed = snapshot;
      }
    }).catch((error: unknown) => this.#options.log.warn({ callSid, err: error }, 'could not renew a turn lease'));
  }

  async #settleAndCommit(
    callSid: string,
    live: Live,
    request: EngineRequest,
    deadline: number,
  ): Promise<EngineAnswer | 'conflict'> {
    let snapshot = await this.#settleKeepingLease(callSid, live, deadline);
    if (snapshot === undefined) return 'conflict';
    if (isWorking(snapshot)) {
      live.actor.send({ type: 'HOLD', at: this.#now() });
      snapshot = await settle(live.actor, AFTER_HOLD_MS);
    }
    const view = viewOf(snapshot);
    const body = this.#options.render(view);
    const revision = await this.#commit(callSid, live.revision, snapshot, request, body);
    if (revision === undefined) {
      this.#dropLive(callSid, live);
      return 'conflict';
    }
    live.revision = revision;
    live.committed = snapshot;
    if (!needsLease(snapshot)) this.#dropLive(callSid, live);
    return { kind: 'answer', body, view };
  }

  /**
   * Waits until the actor settles or the webhook deadline passes. The webhook holds
   * the call's lock all along, which keeps the interval renewal out: the lease is
   * renewed here instead, or a deadline longer than the lease would let another
   * instance adopt a turn still running here. Undefined: the lease was lost.
   */
  async #settleKeepingLease(callSid: string, live: Live, deadline: number): Promise<CallSnapshot | undefined> {
    for (;;) {
      const remaining = deadline - this.#now();
      const snapshot = await settle(live.actor, Math.max(0, Math.min(remaining, LEASE_RENEW_MS)));
      if (!isWorking(snapshot) || remaining <= LEASE_RENEW_MS) return snapshot;
      const revision = await this.#commit(callSid, live.revision, snapshot, {}, undefined);
      if (revision === undefined) {
        this.#dropLive(callSid, live);
        return undefined;
      }
      live.revision = revision;
      live.committed = snapshot;
    }
  }

  /**
   * A live actor settled after its webhook answered, or its background work ended:
   * store the result for the next webhook. It stays live while work goes on.
   */
  #flushLive(callSid: string, live: Live): Promise<unknown> {
    return this.#withLock(callSid, async () => {
      if (this.#live.get(callSid) !== live) return;
      const snapshot = live.actor.getSnapshot();
      if (isWorking(snapshot)) return;
      if (snapshot !== live.committed) {
        const revision = await this.#commit(callSid, live.revision, snapshot, {}, undefined);
        if (revision === undefined) {
          this.#options.log.warn({ callSid }, 'a turn finished after the call moved on; dropped');
          this.#dropLive(callSid, live);
          return;
        }
        live.revision = revision;
        live.committed = snapshot;
      }
      if (!needsLease(snapshot)) this.#dropLive(callSid, live);
    }).catch((error: unknown) => {
      this.#options.log.error({ callSid, err: error }, 'could not store a finished turn');
      this.#dropLive(callSid, live);
    });
  }

  #dropLive(callSid: string, live: Live) {
    if (this.#live.get(callSid) === live) this.#live.delete(callSid);
    clearInterval(live.renewal);
    live.actor.stop();
  }

  /** Returns the new revision, or undefined when another webhook committed first. */
  async #commit(
    callSid: string,
    expectedRevision: number,
    snapshot: CallSnapshot,
    request: EngineRequest,
    body: string | undefined,
    persisted: unknown = this.machine.getPersistedSnapshot(snapshot),
  ): Promise<number | undefined> {
    const result = await this.#options.store.commit({
      callSid,
      expectedRevision,
      snapshot: persisted,
      record: recordOf(snapshot, needsLease(snapshot) ? { instance: this.instanceId, until: this.#now() + LEASE_MS } : undefined),
      ...(request.key && body !== undefined ? { response: { key: request.key, body } } : {}),
      now: this.#now(),
    });
    return result.ok ? result.revision : undefined;
  }

  async #withLock<T>(callSid: string, work: () => Promise<T>): Promise<T> {
    const previous = this.#locks.get(callSid) ?? Promise.resolve();
    const run = previous.then(work, work);
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.#locks.set(callSid, tail);
    void tail.then(() => {
      if (this.#locks.get(callSid) === tail) this.#locks.delete(callSid);
    });
    return run;
  }

  /**
   * Starts the agent's answer streaming (or joins the one already streaming for
   * this turn) and returns as soon as its first piece is complete: the machine
   * goes on to voice it while the agent writes the rest.
   */
  async #askAgent(input: AgentTurnInput, signal: AbortSignal): Promise<AgentTurnOutput> {
    const { key, stream } = this.#replyFor(input, 0);
    try {
      await stream.until(() => stream.pieces.length > 0 || stream.finished, signal);
    } catch (error) {
      // Nobody waits for this answer any more (the caller hung up, the turn moved on).
      this.#dropReply(key, stream, error);
      throw error;
    }
    const first = stream.pieces[0];
    if (!first) {
      this.#dropReply(key, stream, undefined);
      const error = stream.error ?? new AgentError('empty', 'the agent answered with no text');
      this.#options.log.warn({ callSid: input.callSid, err: error }, 'agent turn failed');
      throw error;
    }
    return { text: first.text, firstChunkAt: stream.firstChunkAt ?? this.#now(), at: this.#now() };
  }

  async #voicePrompt(input: VoiceInput, signal: AbortSignal): Promise<VoiceOutput> {
    if (input.prompt.kind === 'reply' && input.reply) return this.#voiceReply(input.callSid, input.reply, signal);
    const voice = this.#options.voice;
    if (!voice) return { at: this.#now() };
    const { prompt } = input;
    try {
      if (prompt.kind === 'phrase') {
        await voice.phrase(prompt.key, prompt.text, signal);
        return { audio: phraseAudioPath(prompt.key), at: this.#now() };
      }
      await voice.reply(replyAudioId(input.callSid, prompt.key), prompt.text, input.previousText, signal);
      return { audio: replyAudioPath(input.callSid, prompt.key), at: this.#now() };
    } catch (error) {
      this.#options.log.child({ callSid: input.callSid }).warn({ err: error }, 'speech synthesis failed; the phone reads the words instead');
      throw error;
    }
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
      return { at: this.#now(), pieces: [], more: false, cut: LOST_ANSWER };
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
    const output: VoiceOutput = { at: this.#now(), pieces, more };
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
   * hearing, and hands all of it to the machine, which stores it: a CONTINUE that
   * lands on another instance voices the rest from the store instead of asking the
   * agent again. It does not fail (the machine has no branch for it): an answer
   * that went wrong yields what the agent wrote, with the reason it was cut.
   */
  async #collectReply(reply: ReplyProgress, signal: AbortSignal): Promise<WrittenReply> {
    const { stream } = this.#replyFor(reply.request, reply.heard.length, reply.written);
    // Aborted when the call moves on first (CONTINUE, a hang-up): the stream stays for whoever voices the rest.
    await stream.until(() => stream.finished, signal);
    if (!continuesHeard(stream, reply.heard)) return { pieces: reply.heard, completeAt: this.#now(), cut: LOST_ANSWER };
    const written: WrittenReply = { pieces: stream.pieces.map((p) => p.text), completeAt: stream.completeAt ?? this.#now() };
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
    const key = replyKey(request.callSid, request.turn);
    return { key, stream: this.#replies.get(key) ?? this.#startReply(key, request, alreadyHeard, written) };
  }

  #startReply(key: string, request: AgentTurnInput, alreadyHeard: number, written?: string[]): ReplyStream {
    const stream = new ReplyStream({
      agent: this.#options.agent,
      request,
      voice: this.#options.voice,
      audioId: (index) => replyAudioId(request.callSid, pieceKey(request.turn, index)),
      mode: this.#options.replyPieces ?? 'sentences',
      // The turn's own bound, whatever the agent adapter does (the built-in agent has none).
      timeoutMs: this.#options.agentTimeoutMs,
      now: this.#now,
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

export function phraseAudioPath(name: string): string {
  return `/audio/phrase/${name}`;
}

export function replyAudioPath(callSid: string, key: string): string {
  return `/audio/call/${callSid}/${key}`;
}

export function replyAudioId(callSid: string, key: string): string {
  return `${callSid}/${key}`;
}

/**
 * The audio key of a reply's piece: `t<turn>` for the first (a reply voiced in one
 * piece keeps the key it always had), `t<turn>p<n>` for the n-th after it.
 */
export function pieceKey(turn: number, piece: number): string {
  return piece === 0 ? `t${turn}` : `t${turn}p${piece}`;
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

function replyKey(callSid: string, turn: number): string {
  return `${callSid}/t${turn}`;
}

const LOST_ANSWER = 'agent: the rest of the answer was lost and, asked again, the agent answered differently';

/** The stream's pieces begin with what the caller has heard (false: it was asked again and said something else). */
function continuesHeard(stream: ReplyStream, heard: string[]): boolean {
  if (stream.finished && stream.pieces.length < heard.length) return false;
  return heard.every((text, i) => stream.pieces[i] === undefined || stream.pieces[i]!.text === text);
}

/** Why an answer with text stopped early, as the turn records it; undefined when it ended normally. */
function cutOf(stream: ReplyStream): string | undefined {
  if (!stream.finished || stream.error === undefined || stream.pieces.length === 0) return undefined;
  return `agent: ${errorMessage(stream.error)}; the answer was cut there`;
}

/** Renderable states end a webhook; working states (agent, speech) are waited for. */
function isWorking(snapshot: CallSnapshot): boolean {
  return snapshot.status === 'active' && !snapshot.hasTag('renderable');
}

/** A renderable state whose invoked actor is still at work (the rest of a reply being written). */
function busyInBackground(snapshot: CallSnapshot): boolean {
  if (snapshot.status !== 'active' || !snapshot.hasTag('renderable')) return false;
  return Object.values(snapshot.children).some((child) => child?.getSnapshot().status === 'active');
}

/** Work is under way for this call in this process: its instance holds the call's lease. */
function needsLease(snapshot: CallSnapshot): boolean {
  return isWorking(snapshot) || busyInBackground(snapshot);
}

/**
 * The machine's pure steps, as XState's `initialTransition()` and `transition()`
 * compute them (the same calls on the machine, with an inert scope that runs no
 * action), with one scope made once instead of one per step. Those functions build
 * a throw-away actor for every step, which computes the machine's initial state
 * (without input, so the `context` factory throws and XState catches it): 36–42 µs
 * a step against 7–12 µs here, once or twice per webhook. A pure step starts no
 * child actor, so nothing registers in the scope's system; the actions a step
 * returns are not run here either (the live actor runs them, see `#goLive`).
 */
class PureSteps {
  readonly #machine: CallMachine;
  readonly #scope: AnyActorScope;

  constructor(machine: CallMachine) {
    this.#machine = machine;
    const self = createActor(machine, { input: undefined as never });
    const ignore = () => {};
    this.#scope = { self, system: self.system, id: '', sessionId: '', defer: ignore, logger: ignore, stopChild: ignore, emit: ignore, actionExecutor: ignore };
  }

  initial(input: CallInput): CallSnapshot {
    return this.#machine.getInitialSnapshot(this.#scope, input);
  }

  next(snapshot: CallSnapshot, event: CallEvent): CallSnapshot {
    return this.#machine.transition(snapshot, event, this.#scope);
  }
}

async function settle(actor: CallActor, timeoutMs: number): Promise<CallSnapshot> {
  if (!isWorking(actor.getSnapshot())) return actor.getSnapshot();
  try {
    return await waitFor(actor, (snapshot) => !isWorking(snapshot), { timeout: timeoutMs });
  } catch {
    return actor.getSnapshot();
  }
}

function viewOf(snapshot: CallSnapshot): CallView {
  return { state: stateName(snapshot.value), context: snapshot.context };
}

export function recordOf(snapshot: CallSnapshot, worker?: CallRecord['worker']): CallRecord {
  const c = snapshot.context;
  const record: CallRecord = {
    callSid: c.callSid,
    from: c.from,
    to: c.to,
    startedAt: c.startedAt,
    status: c.finalStatus ?? 'in-progress',
    state: stateName(snapshot.value),
    turns: c.turns,
    path: c.path,
  };
  if (c.endedAt !== undefined) record.endedAt = c.endedAt;
  if (c.durationSec !== undefined) record.durationSec = c.durationSec;
  if (c.endReason !== undefined) record.endReason = c.endReason;
  if (c.lastError !== undefined) record.lastError = c.lastError;
  if (worker) record.worker = worker;
  return record;
}
