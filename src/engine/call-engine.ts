/**
 * The step-and-commit protocol: for each thing that happens on a call (a webhook,
 * a socket message), load the call, apply the event, commit, and hand back a view
 * of the state for the transport to render. It knows no transport: a transport
 * passes the machine event it translated, and (for Twilio's webhooks) a renderer
 * whose answer is stored for a retried request.
 *
 * Order of work, so that a crash loses nothing the caller was told and two steps
 * can never both commit from one revision:
 *
 * 1. Load the stored call. A request already answered (same idempotency key) gets
 *    the stored answer again, with no agent or speech call.
 * 2. Compute the next state with the machine's pure transition (pure-steps.ts): no
 *    effect runs yet.
 * 3. Commit it with compare-and-set on the revision. Losing means another step got
 *    there first: reload and start over (or replay its answer).
 * 4. Only the winner runs the effects: it restores an actor from the committed
 *    snapshot, which starts the invoked actors (turn.ts), and waits until the
 *    machine settles in a renderable state, or until the step's deadline, when it
 *    tells the machine the turn is slow (SLOW) and the caller is kept on the line.
 *    A step may instead return as soon as the work is claimed (`until: 'claimed'`):
 *    a socket transport hears about the result through `onSettled`.
 * 5. The settled state is committed (with the rendered answer) before it is
 *    returned. An actor still working after its step answered stays in this
 *    process ("live") and commits when it settles; the next step picks the result up.
 *
 * Instances share the work through the lease (lease.ts). A request landing on
 * another instance while the owner works waits for the owner's result (and is
 * answered with the machine's wait, SLOW, if it takes longer than its deadline)
 * instead of running the agent again; a working state whose lease has lapsed was
 * left by a process that died, and is adopted.
 *
 * A renderable state can have work of its own going on after its step has
 * answered (`replying` stores the agent's whole answer once it is written): the
 * actor stays live and keeps the lease until that work is done and committed. A
 * request on another instance that needs the result (PLAYED) waits for it as for
 * a working state; one that changes nothing answers without committing, so the
 * owner's work is not made stale.
 *
 * @see https://github.com/statelyai/xstate/blob/main/packages/core/src/transition.ts
 * @see https://github.com/statelyai/xstate/issues/5331 (why deadlines live in context)
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { createActor, waitFor, type Actor, type SnapshotFrom } from 'xstate';
import { callMachine, stateName, type CallContext, type CallEvent, type CallInput, type CallMachine, type ReplyDelivery } from '../../machines/call.machine.ts';
import type { CallStore, StoredCall } from '../store/call-store.ts';
import { CallLocks } from './call-lock.ts';
import { recordOf } from './call-record.ts';
import { heldElsewhere, isWorking, leaseFor, LEASE_RENEW_MS, needsLease } from './lease.ts';
import { PureSteps } from './pure-steps.ts';
import type { Turns } from './turn.ts';

/** Where a call stands, for a transport to render. */
export interface CallView {
  state: string;
  context: CallContext;
  /** An event the step could not apply yet (another instance is still working on the call): the transport asks again with it. */
  pending?: CallEvent;
}

export interface EngineOptions {
  store: CallStore;
  /** The turn's actors (agent, speech), see turn.ts. */
  turns: Turns;
  log: Logger;
  now?: () => number;
  /** How long a step waits for the machine to settle before the caller is told to wait (SLOW). */
  webhookDeadlineMs: number;
  agentTimeoutMs: number;
  /** Turns a call may have (the machine's default when absent). */
  maxTurns?: number;
  /** A live actor settled after its step had answered, and the result is committed. */
  onSettled?(callSid: string, view: CallView): void;
}

export interface StepRequest {
  /** A key that repeats on retries of one request (Twilio's I-Twilio-Idempotency-Token). */
  key?: string | undefined;
  /** The transport's answer for a view, stored under `key` for a retried request. */
  render?: ((view: CallView) => string) | undefined;
  /** `settled` (default): wait for a renderable state, up to the deadline. `claimed`: return once the work is committed as started. */
  until?: 'settled' | 'claimed';
  /**
   * The event answers the prompt the caller was given at this floor
   * (`CallContext.floor`); at any other the request is stale (a replay of an old
   * one) and is answered without applying it.
   */
  floor?: number | undefined;
}

export type EngineAnswer =
  | { kind: 'answer'; view: CallView; body?: string }
  | { kind: 'replay'; body: string }
  | { kind: 'unknown' };

export interface CallStartInfo {
  callSid: string;
  from: string;
  to: string;
  replyDelivery?: ReplyDelivery;
}

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
/** After SLOW, a moment for a fallback (already-synthesised apology) to settle. */
const AFTER_SLOW_MS = 300;
/** How often a request waiting on another instance's turn looks at the store. */
const OWNER_POLL_MS = 50;

export class CallEngine {
  readonly machine: CallMachine;
  readonly #options: EngineOptions;
  readonly #now: () => number;
  readonly #live = new Map<string, Live>();
  readonly #locks = new CallLocks();
  readonly #pure: PureSteps;
  /** This engine's name in leases. */
  readonly instanceId = randomUUID();

  constructor(options: EngineOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
    this.machine = callMachine.provide({ actors: options.turns.actors() });
    this.#pure = new PureSteps(this.machine);
  }

  /** A new call (or Twilio retrying its first webhook). */
  start(call: CallStartInfo, request: StepRequest = {}): Promise<EngineAnswer> {
    return this.#step(call.callSid, request, undefined, call);
  }

  /** Anything later: an event for the machine, or none to pick up where it is. */
  handle(callSid: string, event: CallEvent | undefined, request: StepRequest = {}): Promise<EngineAnswer> {
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

  #step(callSid: string, request: StepRequest, event: CallEvent | undefined, start: CallStartInfo | undefined): Promise<EngineAnswer> {
    // One deadline for the whole step, whatever it waits on (this call's lock,
    // another instance's turn, the agent) and however often it reloads.
    const deadline = this.#now() + this.#options.webhookDeadlineMs;
    return this.#locks.run(callSid, async () => {
      for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
        const answer = await this.#attempt(callSid, request, event, start, deadline);
        if (answer === 'reload') {
          attempt--; // the owner finished its turn: not a conflict, just look again
          continue;
        }
        if (answer !== 'conflict') return answer;
        this.#options.log.debug({ callSid, attempt }, 'commit lost to a concurrent request; reloading');
      }
      throw new Error(`call ${callSid}: gave up after ${MAX_ATTEMPTS} conflicting commits`);
    });
  }

  async #attempt(
    callSid: string,
    request: StepRequest,
    event: CallEvent | undefined,
    start: CallStartInfo | undefined,
    deadline: number,
  ): Promise<EngineAnswer | 'conflict' | 'reload'> {
    const stored = await this.#options.store.load(callSid);
    const replay = request.key ? stored?.responses[request.key] : undefined;
    if (replay !== undefined) return { kind: 'replay', body: replay };
    event = this.#untaken(stored, event, request);

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
      const input: CallInput = { callSid: start.callSid, from: start.from, to: start.to, at: this.#now(), agentTimeoutMs: this.#options.agentTimeoutMs };
      if (start.replyDelivery) input.replyDelivery = start.replyDelivery;
      if (this.#options.maxTurns !== undefined) input.maxTurns = this.#options.maxTurns;
      current = next = this.#pure.initial(input);
    } else {
      if (stored.snapshot === null) return { kind: 'unknown' };
      current = this.machine.resolveState(stored.snapshot as Parameters<CallMachine['resolveState']>[0]);
      next = event ? this.#pure.next(current, event) : current;
      const ownedElsewhere = heldElsewhere(stored.record.worker, this.instanceId, this.#now());
      if (isWorking(current) && (next === current || isWorking(next))) {
        if (ownedElsewhere) return this.#waitForOwner(stored, next, deadline, event, request);
        return this.#adopt(stored, event, request, deadline);
      }
      if (ownedElsewhere) {
        // The owner is finishing work in the background (the rest of a reply).
        if (isWorking(next)) return this.#waitForOwner(stored, next, deadline, event, request);
        if (next === current) {
          // Nothing changes: answer without a commit, which would make the owner's work stale.
          return answerOf(viewOf(current), request);
        }
      }
    }

    const expectedRevision = stored?.revision ?? 0;
    if (!isWorking(next)) {
      const answer = answerOf(viewOf(next), request);
      // Nothing changed; still, with a key, the answer is stored (at the cost of a
      // commit) so that a retry gets this very answer, audio-link expiry included.
      if (stored && next === current && !request.key) return answer;
      const committed = await this.#commit(callSid, expectedRevision, next, request.key, answer.body);
      return committed === undefined ? 'conflict' : answer;
    }

    // The event starts work (agent, speech). Claim the turn first, so only one
    // request ever runs it; then run it from the committed snapshot.
    const persisted = this.machine.getPersistedSnapshot(next);
    const claimed = await this.#commit(callSid, expectedRevision, next, undefined, undefined, persisted);
    if (claimed === undefined) return 'conflict';
    return this.#settleAndCommit(callSid, this.#goLive(callSid, persisted, claimed), request, deadline);
  }

  /**
   * The event unless the call has already taken it: caller's words brought back by
   * a recovery redirect (their `at` is when they were first heard) that a turn has
   * already taken, here or on another instance, or an answer to a prompt the call
   * has moved past (a replayed request). Checked after the load and under the
   * call's lock, so it holds however a retry and the first attempt interleave.
   */
  #untaken(stored: StoredCall | null, event: CallEvent | undefined, request: StepRequest): CallEvent | undefined {
    if (!event || !stored) return event;
    if (event.type === 'SPEECH' && stored.record.path.some((step) => step.event === 'SPEECH' && step.at === event.at)) return undefined;
    if (request.floor !== undefined && stored.snapshot !== null) {
      const floor = (stored.snapshot as { context?: { floor?: unknown } }).context?.floor;
      if (floor !== request.floor) {
        this.#options.log.info({ callSid: stored.callSid, event: event.type }, 'ignored an answer to a prompt the call has moved past (a replayed request)');
        return undefined;
      }
    }
    return event;
  }

  /**
   * Another live instance is running this call's turn: wait for its result rather
   * than run the agent twice. Past the deadline the caller is kept waiting, as the
   * machine says for a slow turn in the state the event leads to (`waiting`, a
   * working state): nothing is committed, the owner still owns the turn, and the
   * event is handed back as pending for the transport to bring again.
   */
  async #waitForOwner(
    stored: StoredCall,
    waiting: CallSnapshot,
    deadline: number,
    event: CallEvent | undefined,
    request: StepRequest,
  ): Promise<EngineAnswer | 'reload'> {
    // The step's deadline, not a fresh one: the owner's lease renewals reload
    // this wait every LEASE_RENEW_MS, and must not keep Twilio waiting past it.
    while (this.#now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, OWNER_POLL_MS));
      const latest = await this.#options.store.load(stored.callSid);
      if (!latest || latest.revision !== stored.revision) return 'reload';
    }
    const view = viewOf(this.#pure.next(waiting, { type: 'SLOW', at: this.#now() }));
    if (event) view.pending = event;
    return answerOf(view, request);
  }

  /** A working state nobody is running any more: its process died. Restoring restarts the work. */
  #adopt(stored: StoredCall, event: CallEvent | undefined, request: StepRequest, deadline: number) {
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
    return this.#locks.run(callSid, async () => {
      if (this.#live.get(callSid) !== live) return;
      const snapshot = live.actor.getSnapshot();
      if (!needsLease(snapshot)) return;
      if (!(await this.#commitLive(callSid, live, snapshot))) {
        this.#options.log.warn({ callSid }, 'lost the lease on a turn: another instance moved the call on');
      }
    }).catch((error: unknown) => this.#options.log.warn({ callSid, err: error }, 'could not renew a turn lease'));
  }

  async #settleAndCommit(callSid: string, live: Live, request: StepRequest, deadline: number): Promise<EngineAnswer | 'conflict'> {
    let snapshot = live.actor.getSnapshot();
    if (isWorking(snapshot) && request.until === 'claimed') return answerOf(viewOf(snapshot), request);
    const settled = await this.#settleKeepingLease(callSid, live, deadline);
    if (settled === undefined) return 'conflict';
    snapshot = settled;
    if (isWorking(snapshot)) {
      live.actor.send({ type: 'SLOW', at: this.#now() });
      snapshot = await settle(live.actor, AFTER_SLOW_MS);
    }
    const answer = answerOf(viewOf(snapshot), request);
    if (!(await this.#commitLive(callSid, live, snapshot, request.key, answer.body))) return 'conflict';
    return answer;
  }

  /**
   * Waits until the actor settles or the deadline passes. The step holds the
   * call's lock all along, which keeps the interval renewal out: the lease is
   * renewed here instead, or a deadline longer than the lease would let another
   * instance adopt a turn still running here. Undefined: the lease was lost.
   */
  async #settleKeepingLease(callSid: string, live: Live, deadline: number): Promise<CallSnapshot | undefined> {
    for (;;) {
      const remaining = deadline - this.#now();
      const snapshot = await settle(live.actor, Math.max(0, Math.min(remaining, LEASE_RENEW_MS)));
      if (!isWorking(snapshot) || remaining <= LEASE_RENEW_MS) return snapshot;
      if (!(await this.#commitLive(callSid, live, snapshot))) return undefined;
    }
  }

  /**
   * A live actor settled after its step answered, or its background work ended:
   * store the result for the next step. It stays live while work goes on.
   */
  #flushLive(callSid: string, live: Live): Promise<unknown> {
    return this.#locks.run(callSid, async () => {
      if (this.#live.get(callSid) !== live) return;
      const snapshot = live.actor.getSnapshot();
      if (isWorking(snapshot)) return;
      if (snapshot === live.committed) {
        if (!needsLease(snapshot)) this.#dropLive(callSid, live);
        return;
      }
      if (!(await this.#commitLive(callSid, live, snapshot))) {
        this.#options.log.warn({ callSid }, 'a turn finished after the call moved on; dropped');
        return;
      }
      this.#options.onSettled?.(callSid, viewOf(snapshot));
    }).catch((error: unknown) => {
      this.#options.log.error({ callSid, err: error }, 'could not store a finished turn');
      this.#dropLive(callSid, live);
    });
  }

  /** Commits a live actor's snapshot; false (and the actor dropped) when another step committed first. */
  async #commitLive(callSid: string, live: Live, snapshot: CallSnapshot, key?: string, body?: string): Promise<boolean> {
    const revision = await this.#commit(callSid, live.revision, snapshot, key, body);
    if (revision === undefined) {
      this.#dropLive(callSid, live);
      return false;
    }
    live.revision = revision;
    live.committed = snapshot;
    if (!needsLease(snapshot)) this.#dropLive(callSid, live);
    return true;
  }

  #dropLive(callSid: string, live: Live) {
    if (this.#live.get(callSid) === live) this.#live.delete(callSid);
    clearInterval(live.renewal);
    live.actor.stop();
  }

  /** Returns the new revision, or undefined when another step committed first. */
  async #commit(
    callSid: string,
    expectedRevision: number,
    snapshot: CallSnapshot,
    key: string | undefined,
    body: string | undefined,
    persisted: unknown = this.machine.getPersistedSnapshot(snapshot),
  ): Promise<number | undefined> {
    const result = await this.#options.store.commit({
      callSid,
      expectedRevision,
      snapshot: persisted,
      record: recordOf(snapshot, needsLease(snapshot) ? leaseFor(this.instanceId, this.#now()) : undefined),
      ...(key && body !== undefined ? { response: { key, body } } : {}),
      now: this.#now(),
    });
    return result.ok ? result.revision : undefined;
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

function answerOf(view: CallView, request: StepRequest): { kind: 'answer'; view: CallView; body?: string } {
  return request.render ? { kind: 'answer', view, body: request.render(view) } : { kind: 'answer', view };
}
