/**
 * Runs one generated relay-model path (relay-model.ts) against the real service
 * with CALL_TRANSPORT=relay, the way Twilio's ConversationRelay would: the signed
 * `/voice`, the signed WebSocket upgrade and `setup` (src/phone/relay-caller.ts),
 * the caller's messages on the socket, the `<Connect action>` request when a
 * session ends, and `/call-status` when the caller hangs up.
 *
 * As in path-driver.ts, the path is cut into segments, one per thing Twilio (or
 * the clock) does: a segment starts at the call connecting, a final `prompt`
 * (the caller's words, or an empty one: SILENCE), a `dtmf`, an `interrupt`, the
 * socket dropping (RECONNECTED: the action URL, then a new session), the caller
 * hanging up (the socket closes, then `/call-status`), or the agent staying
 * silent (SLOW: past the session's wait, WEBHOOK_DEADLINE_MS; a late SLOW: past
 * the turn's deadline, by moving the service's clock). It runs through the events
 * the service's own actors produce. Before a turn starts, the fake agent is
 * scripted for how the path says it ends: it answers (at once, after a hold, or
 * writing its first words and then nothing for a while, so the caller can speak
 * over it or the line can drop mid-answer), fails, or never answers.
 *
 * A segment is over when Twilio has been sent what its last state says (the
 * reply's tokens to `last: true`, a phrase, `end`, the hold line) and the store
 * holds the state; a working state (`thinking`, `speaking`) is committed when the
 * turn is claimed and when it settles, so in between the store holds the claim.
 *
 * Adding an event sample to the relay model means teaching `planRelayPath` and
 * `#trigger` how Twilio produces it.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PHRASES, stateName, type CallContext } from '../../machines/call.machine.ts';
import type { RelayConnect, SimulatedRelaySession } from '../../src/phone/relay-caller.ts';
import type { CallRecord } from '../../src/store/call-store.ts';
import type { ServiceMessage } from '../../src/transports/relay/messages.ts';
import type { FakeAgent, FakeAgentBehaviour } from '../fakes/agent-server.ts';
import { dialRelay, openSession, sessionEnded, twilioPost } from '../support/relay-call.ts';
import { startService, type RunningService } from '../support/service.ts';
import { AGENT_REPLY, AGENT_TIMEOUT_MS, agentOutcome, endsAgentTurn, isEarlySlow, LATE, MODEL_MAX_TURNS, type AgentOutcome, type ModelEvent } from './call-model.ts';
import type { ModelStep } from './path-driver.ts';
import { AGENT_FIRST_WORDS } from './relay-model.ts';

/** How long the caller waits for the agent's first words before the machine hears the turn is slow (WEBHOOK_DEADLINE_MS). */
export const RELAY_WAIT_MS = 200;
/** A slow agent: silent well past the session's wait. */
const SLOW_MS = 1_200;
/** An agent that writes its first words, then nothing for this long: the caller speaks over it, or the line drops, first. */
const WRITING_ON_MS = 3_000;
/** The longest a segment may take to settle. */
const SETTLED_WITHIN_MS = 5_000;
/** What Twilio sends the action URL when the session's socket went mid-call: "64105: ConversationRelay: Websocket ended" (https://www.twilio.com/docs/api/errors/64105). */
const SOCKET_DROPPED = { SessionStatus: 'failed', ErrorCode: '64105' };


/** What Twilio (or the passing time) does to start a segment. */
export type Trigger =
  | { kind: 'dial' }
  | { kind: 'prompt'; text: string }
  | { kind: 'dtmf'; digit: string }
  | { kind: 'interrupt'; heard: string }
  | { kind: 'drop' }
  | { kind: 'hangUp' }
  /** The agent's silence outlasts the session's wait: the session sends SLOW. */
  | { kind: 'wait' }
  /** The turn's deadline passes (the service's clock moves past it): the session's next SLOW is late. */
  | { kind: 'late' };

export interface RelaySegment {
  first: number;
  last: number;
  trigger: Trigger;
  /** This segment starts an agent turn that ends like this; `slow`: after a hold; `writesOn`: its first words, then a long silence. */
  agent?: { outcome: AgentOutcome; slow: boolean; writesOn: boolean };
}

/** Cuts a relay path into segments and decides how the agent behaves in each turn. */
export function planRelayPath(steps: ModelStep[]): RelaySegment[] {
  const segments: RelaySegment[] = [];
  for (const [index, step] of steps.entries()) {
    const trigger = triggerOf(step.event);
    if (index === 0 || trigger) segments.push({ first: index, last: index, trigger: trigger ?? { kind: 'dial' } });
    else segments.at(-1)!.last = index;
  }
  const segmentOf = (index: number) => segments.find((s) => s.first <= index && index <= s.last)!;
  for (const [index, step] of steps.entries()) {
    const entersThinking = stateName(step.state.value) === 'thinking' && (index === 0 || stateName(steps[index - 1]!.state.value) !== 'thinking');
    if (!entersThinking) continue;
    const endsAt = steps.findIndex((s, i) => i > index && endsAgentTurn(s.event));
    const waits = steps.slice(index + 1, endsAt < 0 ? undefined : endsAt);
    const outcome = endsAt < 0 ? 'never' : agentOutcome(steps[endsAt]!.event);
    const writesOn = outcome === 'reply' && steps[endsAt + 1]?.event.type !== 'xstate.done.actor.voice';
    segmentOf(index).agent = { outcome, slow: waits.some((s) => isEarlySlow(s.event)), writesOn };
  }
  return segments;
}

function triggerOf(event: ModelEvent): Trigger | undefined {
  switch (event.type) {
    case 'xstate.init':
      return { kind: 'dial' };
    case 'SPEECH':
      return { kind: 'prompt', text: event.text };
    case 'SILENCE':
      // ConversationRelay's final transcript of nothing said.
      return { kind: 'prompt', text: '' };
    case 'DIGITS':
      return { kind: 'dtmf', digit: event.digits };
    case 'INTERRUPT':
      return { kind: 'interrupt', heard: event.heard };
    case 'RECONNECTED':
      return { kind: 'drop' };
    case 'HANGUP':
      return { kind: 'hangUp' };
    case 'SLOW':
      return isEarlySlow(event) ? { kind: 'wait' } : { kind: 'late' };
    default:
      // The service's own actors produce every other event.
      return undefined;
  }
}




/** The fake agent's behaviour for a turn. */
function agentScript(plan: NonNullable<RelaySegment['agent']>): FakeAgentBehaviour {
  switch (plan.outcome) {
    case 'reply':
      return {
        kind: 'bursts',
        bursts: [
          { text: AGENT_FIRST_WORDS, delayMs: plan.slow ? SLOW_MS : 0 },
          { text: AGENT_REPLY.slice(AGENT_FIRST_WORDS.length), delayMs: plan.writesOn ? WRITING_ON_MS : 0 },
        ],
      };
    case 'fail':
      return plan.slow ? { kind: 'events', data: ['not json'], delayMs: SLOW_MS } : { kind: 'status', status: 500 };
    case 'late':
    case 'never':
      return { kind: 'hang' };
  }
}

/** Messages of a segment, as Twilio speaks them: the hold line apart (a busy machine may say it where the path did not). */
export interface Spoken {
  holds: number;
  /** Every other `text`, in order. */
  texts: Array<{ token: string; last: boolean }>;
  ends: Array<{ handoffData?: string }>;
  others: ServiceMessage[];
}

export function spokenIn(messages: ServiceMessage[]): Spoken {
  const spoken: Spoken = { holds: 0, texts: [], ends: [], others: [] };
  for (const message of messages) {
    if (message.type === 'text' && message.token === PHRASES.hold && message.last) spoken.holds++;
    else if (message.type === 'text') spoken.texts.push({ token: message.token, last: message.last ?? false });
    else if (message.type === 'end') spoken.ends.push(message.handoffData === undefined ? {} : { handoffData: message.handoffData });
    else spoken.others.push(message);
  }
  return spoken;
}

export interface RelaySegmentResult {
  /** Every message Twilio received on the call's sockets during this segment. */
  messages: ServiceMessage[];
  /** The `<ConversationRelay>` Twilio was connected with: by `/voice`, or by the action URL after a drop. */
  connect?: RelayConnect;
  /** The action URL's TwiML, once the session ended with `end`. */
  actionTwiml?: string;
  /** `/call-status`'s answer. */
  statusAnswer?: { status: number; body: string };
  record: CallRecord;
}

/** One relay call placed along one path. Runs each segment when the path reaches its first step; state checks then read `result`. */
export class RelayPathDriver {
  readonly steps: ModelStep[];
  readonly segments: RelaySegment[];
  readonly callSid: string;
  result: RelaySegmentResult | undefined;
  /** Every session Twilio opened for the call, in order (a drop opens another). */
  readonly sessions: SimulatedRelaySession[] = [];
  /** How many agent connections the service had closed when the current segment began. */
  hungUpBefore = 0;
  readonly #agent: FakeAgent;
  readonly #dataDir = mkdtempSync(join(tmpdir(), 'heyai-relay-model-'));
  readonly #clock = { offset: 0 };
  #service: RunningService | undefined;
  #connect: RelayConnect | undefined;
  /** Where each segment's messages begin in `messages()`. */
  readonly #segmentFrom = new Map<RelaySegment, number>();

  constructor(steps: ModelStep[], callSid: string, agent: FakeAgent) {
    this.steps = steps;
    this.segments = planRelayPath(steps);
    this.callSid = callSid;
    this.#agent = agent;
  }

  get service(): RunningService {
    if (!this.#service) throw new Error('the service is not running');
    return this.#service;
  }

  get session(): SimulatedRelaySession {
    const session = this.sessions.at(-1);
    if (!session) throw new Error('no relay session is open');
    return session;
  }

  segmentAt(index: number): RelaySegment | undefined {
    return this.segments.find((s) => s.first <= index && index <= s.last);
  }

  /** Every message received on the call's sockets so far, in order (sessions follow one another). */
  messages(): ServiceMessage[] {
    return this.sessions.flatMap((s) => s.received);
  }

  /** Runs the segment that starts at this step, if one does, until it has settled. */
  async runStepEvent(index: number): Promise<void> {
    const segment = this.segments.find((s) => s.first === index);
    if (!segment) return;
    if (!this.#service) {
      this.#service = await startService(
        {
          CALL_TRANSPORT: 'relay',
          KOOZIE_AGENT_URI: this.#agent.url,
          WEBHOOK_DEADLINE_MS: String(RELAY_WAIT_MS),
          AGENT_TIMEOUT_MS: String(AGENT_TIMEOUT_MS),
          CALL_MAX_TURNS: String(MODEL_MAX_TURNS),
          LOG_LEVEL: 'warn',
        },
        { dataDir: this.#dataDir, now: () => Date.now() + this.#clock.offset },
      );
    }
    if (segment.agent) this.#agent.setBehaviour(agentScript(segment.agent));
    this.hungUpBefore = this.#agent.hungUp();
    const from = this.messages().length;
    this.#segmentFrom.set(segment, from);
    const result: Omit<RelaySegmentResult, 'messages' | 'record'> = {};
    await this.#trigger(segment.trigger, result);

    const end = this.steps[segment.last]!.state;
    if (segment.agent) {
      const turns = end.context.turns.length;
      await until(() => this.#agent.requests.filter((r) => r.callSid === this.callSid).length >= turns, 'the agent was not asked');
    }
    await this.#untilSpoken(from, end, segment, result);
    const record = await this.#untilStored(end);
    this.result = { ...result, messages: this.messages().slice(from), record };
  }

  async close(): Promise<void> {
    for (const session of this.sessions) await session.hangUp().catch(() => undefined);
    await this.#service?.close();
    this.#service = undefined;
    rmSync(this.#dataDir, { recursive: true, force: true });
  }

  async #trigger(trigger: Trigger, result: Omit<RelaySegmentResult, 'messages' | 'record'>): Promise<void> {
    const call = { callSid: this.callSid, from: '+15550100001', to: '+15550100002' };
    switch (trigger.kind) {
      case 'dial': {
        const dialled = await dialRelay(this.service.address, call);
        this.#connect = result.connect = dialled.connect;
        this.sessions.push(dialled.session);
        return;
      }
      case 'prompt':
        // A partial transcript first, as Twilio streams them; only the final one is the caller's turn.
        if (trigger.text) this.session.prompt(trigger.text.split(' ')[0]!, { last: false });
        this.session.prompt(trigger.text);
        return;
      case 'dtmf':
        this.session.dtmf(trigger.digit);
        return;
      case 'interrupt':
        this.session.interrupt(trigger.heard, 900);
        return;
      case 'drop': {
        await this.session.hangUp();
        const ended = await sessionEnded(this.service.address, this.#connect!, this.callSid, SOCKET_DROPPED);
        if (ended.status !== 200) throw new Error(`the action URL answered ${ended.status}: ${ended.body.slice(0, 200)}`);
        const resumed = await openSession(this.service.address, ended.body, call);
        this.#connect = result.connect = resumed.connect;
        this.sessions.push(resumed.session);
        return;
      }
      case 'hangUp': {
        // The caller hangs up: Twilio ends the session, then reports the call over.
        await this.sessions.at(-1)?.hangUp();
        result.statusAnswer = await twilioPost(this.service.address, '/call-status', { CallSid: this.callSid, CallStatus: 'completed', CallDuration: '12' });
        return;
      }
      case 'wait':
        return;
      case 'late':
        this.#clock.offset += AGENT_TIMEOUT_MS + 1_000;
        return;
    }
  }

  /** Waits until Twilio has been sent what the segment's last state says; an `end` is followed by the action URL. */
  async #untilSpoken(from: number, end: ModelStep['state'], segment: RelaySegment, result: Omit<RelaySegmentResult, 'messages' | 'record'>): Promise<void> {
    const context = end.context;
    const state = stateName(end.value);
    const spoken = () => spokenIn(this.messages().slice(from));
    const turnStart = this.turnStart(segment);
    let ready: () => boolean = () => true;
    if (state === 'terminating') ready = () => spoken().ends.length > 0;
    else if (state === 'speaking') ready = () => spoken().texts.length > 0;
    else if (state === 'thinking' && context.filler === 'hold') ready = () => spokenIn(this.messages().slice(turnStart)).holds > 0;
    else if (state === 'listening' && segment.trigger.kind !== 'interrupt' && (context.prompt.kind === 'reply' || saysOnSocket(context, segment))) {
      ready = () => spoken().texts.some((t) => t.last);
    }
    await until(ready, `Twilio was not sent what ${state} says`);
    if (state === 'terminating') {
      const [sent] = spoken().ends;
      const ended = await sessionEnded(this.service.address, this.#connect!, this.callSid, { SessionStatus: 'completed', ...(sent?.handoffData ? { HandoffData: sent.handoffData } : {}) });
      if (ended.status !== 200) throw new Error(`the action URL answered ${ended.status}: ${ended.body.slice(0, 200)}`);
      result.actionTwiml = ended.body;
    }
  }

  /** Where the messages of the current turn begin: at the segment that started it. */
  turnStart(segment: RelaySegment): number {
    const index = this.segments.indexOf(segment);
    const started = this.segments.slice(0, index + 1).findLast((s) => s.agent !== undefined);
    return started ? (this.#segmentFrom.get(started) ?? 0) : 0;
  }

  /** Waits until the store holds the segment's last state (for a working state: the turn claimed, at least). */
  async #untilStored(end: ModelStep['state']): Promise<CallRecord> {
    const store = this.service.service.store;
    const expected = end.context.path.map((p) => `${p.state}|${p.event}`);
    const working = end.hasTag('working');
    // A working state is committed when its turn is claimed: up to the last `thinking`, at least.
    const claimed = expected.findLastIndex((p) => p.startsWith('thinking|')) + 1;
    const settled = (record: CallRecord | null): record is CallRecord => {
      if (!record) return false;
      const stored = record.path.map((p) => `${p.state}|${p.event}`);
      if (working) return stored.length >= claimed && stored.every((p, i) => p === expected[i]);
      return record.state === stateName(end.value) && stored.join() === expected.join() && sameTurns(record, end.context);
    };
    let record: CallRecord | null = null;
    await until(async () => settled((record = await store.getRecord(this.callSid))), `the store never held ${stateName(end.value)}`);
    return record!;
  }
}

/** The phrase of a `listening` state reaches the caller as a `text` (not as the welcome greeting of a session being connected). */
function saysOnSocket(context: CallContext, segment: RelaySegment): boolean {
  return context.prompt.kind === 'phrase' && segment.trigger.kind !== 'dial' && segment.trigger.kind !== 'drop';
}

/** The turns as the test compares them with the model. */
export function turnsOf(turns: CallContext['turns']) {
  return turns.map((t) => ({ caller: t.caller, reply: t.reply, failed: t.failure !== undefined, interrupted: t.interrupted ?? false, cut: t.cut }));
}

function sameTurns(record: CallRecord, context: CallContext): boolean {
  return JSON.stringify(turnsOf(record.turns)) === JSON.stringify(turnsOf(context.turns));
}

async function until(ready: () => boolean | Promise<boolean>, otherwise: string): Promise<void> {
  for (const started = Date.now(); !(await ready()); ) {
    if (Date.now() - started > SETTLED_WITHIN_MS) throw new Error(`${otherwise} within ${SETTLED_WITHIN_MS} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
