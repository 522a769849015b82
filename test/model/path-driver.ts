/**
 * Runs one generated model path against the real service, the way Twilio would.
 *
 * A model path moves one machine event at a time; the service moves one webhook at
 * a time, and a webhook runs through several machine events (the caller speaks →
 * the agent answers → the reply is voiced → listening). So the path is first cut
 * into segments, one per webhook: a segment starts at what Twilio sends (the call
 * connecting, the caller's words or silence, a status callback, `/continue` after
 * a hold, or `/continue?played=1` once a reply's first sentence has played:
 * PLAYED) and runs through the events the service's own actors produce.
 * Before a segment's webhook is sent the fakes are set up to produce exactly those
 * events: the fake agent answers, fails, is slow or never answers; the fake
 * ElevenLabs answers, fails or never answers; the service's clock jumps past the
 * turn deadline for a late SLOW.
 *
 * A segment ending in a working state (`thinking`, `speaking`) is observed the way
 * Twilio sees it: the vendor is kept slow, the webhook deadline passes and the
 * service answers with a hold (`<Redirect>` to `/continue`).
 *
 * A reply the caller hears in two parts (`replying`) comes from an agent that
 * writes its first sentence at once and the rest AGENT_REST_AFTER_MS later. The
 * whole answer being stored (`done: collectReply`) happens after the webhook has
 * answered: the driver waits until the store has it. A PLAYED after that goes to
 * a fresh instance on the same store (as Cloud Run may route it), which voices the
 * rest from the store; a CONTINUE before it goes to the instance still streaming.
 *
 * Adding an event sample to the model means teaching `planPath` what real action
 * performs it (see the `switch` statements below).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PHRASES, stateName, type CallContext, type Prompt } from '../../machines/call.machine.ts';
import { phraseAudioPath, pieceKey, replyAudioPath } from '../../src/engine/audio-address.ts';
import { parseTwiml, type SimulatedCall } from '../../src/phone/twilio-caller.ts';
import type { CallRecord } from '../../src/store/call-store.ts';
import type { FakeAgent, FakeAgentScript } from '../fakes/agent-server.ts';
import type { FakeElevenLabs, FakeElevenLabsBehaviour } from '../fakes/elevenlabs-server.ts';
import { ELEVENLABS_KEY, PUBLIC_BASE_URL, startService, type RunningService } from '../support/service.ts';
import { AGENT_REPLY, AGENT_REPLY_REST, AGENT_TIMEOUT_MS, agentOutcome, endsAgentTurn, isEarlySlow, MODEL_MAX_TURNS, type AgentOutcome, type ModelEvent } from './call-model.ts';

/** How long a webhook waits before it puts the caller on hold (the service's WEBHOOK_DEADLINE_MS). */
export const WEBHOOK_DEADLINE_MS = 150;
/** A slow vendor: well past the webhook deadline plus the engine's short wait after SLOW. */
const SLOW_MS = 1_200;
/** `/continue` rounds a segment may take before it must have settled. */
const MAX_CONTINUE_ROUNDS = 30;
/** How long after its first sentence the agent writes the rest of a two-part answer. */
const AGENT_REST_AFTER_MS = 600;
/** The longest the driver waits for the whole answer to be stored. */
const STORED_WITHIN_MS = 5_000;
/** The query of the redirect a reply's first pieces end with. */
const PLAYED = '?played=1';

export interface ModelStep {
  event: ModelEvent;
  state: { value: unknown; status: string; context: CallContext; hasTag(tag: string): boolean };
}

type VoiceOutcome = 'audio' | 'fail' | 'never';

export interface Segment {
  first: number;
  last: number;
  /** The webhook Twilio sends to start this segment. */
  request: { path: string; form: Record<string, string> };
  /**
   * This webhook starts an agent turn that ends like this; `slow` when it outlasts
   * the webhook; `twoParts` when the caller hears the first sentence while the
   * agent writes the rest.
   */
  agent?: { outcome: AgentOutcome; slow: boolean; jumpOnRequest: boolean; twoParts: boolean };
  /** Speaking is entered during this segment: the prompt, and how ElevenLabs answers. */
  voice?: { prompt: Prompt; outcome: VoiceOutcome };
  /** A late SLOW happens in this segment, after a hold: move the clock before sending. */
  jumpBeforeRequest: boolean;
  /** The whole answer is stored during this segment, after its webhook answered: wait for it. */
  awaitStored: boolean;
  /** Sent to a fresh instance on the same store (a CONTINUE after the answer was stored). */
  freshInstance: boolean;
  /** What Twilio gets back at the end: TwiML for listening/terminating, a hold, or the status-callback answer. */
  answer: 'rendered' | 'hold' | 'status';
}

const TRIGGERS = new Set(['xstate.init', 'SPEECH', 'SILENCE', 'DIGITS', 'HANGUP', 'PLAYED']);

/** Cuts a model path into webhooks and decides how each vendor behaves in each. */
export function planPath(steps: ModelStep[]): Segment[] {
  const segments: Segment[] = [];
  for (const [index, step] of steps.entries()) {
    const previous = steps[index - 1];
    const afterHold = previous !== undefined && isEarlySlow(previous.event);
    if (index === 0 || TRIGGERS.has(step.event.type) || afterHold) {
      const freshInstance = step.event.type === 'PLAYED' && previous?.state.context.turns.at(-1)?.written !== undefined;
      segments.push({
        first: index,
        last: index,
        request: requestFor(step.event),
        jumpBeforeRequest: false,
        awaitStored: false,
        freshInstance,
        answer: 'rendered',
      });
    } else {
      segments.at(-1)!.last = index;
    }
  }
  const segmentOf = (index: number) => segments.findIndex((s) => s.first <= index && index <= s.last);

  for (const [index, step] of steps.entries()) {
    const segment = segments[segmentOf(index)]!;
    const value = stateName(step.state.value);
    const previousValue = index > 0 ? stateName(steps[index - 1]!.state.value) : undefined;

    if (value === 'thinking' && previousValue !== 'thinking') {
      // A new agent turn: how does it end?
      const end = steps.findIndex((s, i) => i > index && endsAgentTurn(s.event));
      const outcome = end < 0 ? 'never' : agentOutcome(steps[end]!.event);
      const slow = end < 0 || segmentOf(end) !== segmentOf(index);
      const voiced = steps.find((s, i) => i > index && (s.event.type === 'xstate.done.actor.voice' || s.event.type === 'xstate.error.actor.voice'))?.event;
      const twoParts = outcome === 'reply' && voiced?.type === 'xstate.done.actor.voice' && voiced.output.more === true;
      segment.agent = { outcome, slow, jumpOnRequest: outcome === 'late' && !slow, twoParts };
      if (outcome === 'late' && slow) segments[segmentOf(end)]!.jumpBeforeRequest = true;
    }
    if (value === 'speaking' && (previousValue !== 'speaking' || index === 0)) {
      const next = steps[index + 1]?.event.type;
      const outcome: VoiceOutcome = next === 'xstate.done.actor.voice' ? 'audio' : next === 'xstate.error.actor.voice' ? 'fail' : 'never';
      segment.voice = { prompt: step.state.context.prompt, outcome };
    }
    if (step.event.type === 'xstate.done.actor.rest') segment.awaitStored = true;
  }
  for (const segment of segments) {
    // As the engine decides: an active state without the `renderable` tag is still working.
    const end = steps[segment.last]!.state;
    const working = end.status === 'active' && !end.hasTag('renderable');
    segment.answer = segment.request.path === '/call-status' ? 'status' : working ? 'hold' : 'rendered';
  }
  return segments;
}

/** What Twilio sends for the event that starts a segment. */
function requestFor(event: ModelEvent): Segment['request'] {
  switch (event.type) {
    case 'xstate.init':
      return { path: '/voice', form: { CallStatus: 'ringing' } };
    case 'SPEECH':
      return { path: '/speech-result', form: { SpeechResult: event.text, Confidence: '0.92' } };
    case 'SILENCE':
      return { path: '/speech-result', form: {} };
    case 'DIGITS':
      return { path: '/speech-result', form: { Digits: event.digits } };
    case 'HANGUP':
      return { path: '/call-status', form: { CallStatus: event.status, CallDuration: '12' } };
    case 'PLAYED':
      return { path: `/continue${PLAYED}`, form: {} };
    default:
      // The service's own actors produce every other event; after a hold Twilio follows `<Redirect>`.
      return { path: '/continue', form: {} };
  }
}




/** The fake agent's behaviour for a turn. */
function agentScript(plan: NonNullable<Segment['agent']>, jumpClock: () => void): FakeAgentScript {
  const answer = () => AGENT_REPLY;
  switch (plan.outcome) {
    case 'reply':
      if (plan.twoParts) {
        return {
          kind: 'bursts',
          bursts: [
            { text: `${AGENT_REPLY} `, delayMs: plan.slow ? SLOW_MS : 0 },
            { text: AGENT_REPLY_REST, delayMs: AGENT_REST_AFTER_MS },
          ],
        };
      }
      return plan.slow ? { kind: 'reply', answer, firstChunkDelayMs: SLOW_MS } : { kind: 'reply', answer };
    case 'fail':
      return plan.slow ? { kind: 'events', data: ['not json'], delayMs: SLOW_MS } : { kind: 'status', status: 500 };
    case 'late':
      // The turn's deadline passes while the agent is silent: the next SLOW finds it late.
      return () => {
        if (plan.jumpOnRequest) jumpClock();
        return { kind: 'hang' };
      };
    case 'never':
      return { kind: 'hang' };
  }
}

function voiceBehaviour(outcome: VoiceOutcome): FakeElevenLabsBehaviour {
  switch (outcome) {
    case 'audio':
      return { kind: 'audio' };
    case 'fail':
      return { kind: 'status', status: 500 };
    case 'never':
      return { kind: 'hang' };
  }
}

export interface Verb {
  verb: string;
  attrs: Record<string, string>;
  text: string;
  children: Verb[];
}

/** A TwiML document as a list of verbs (strictly parsed, as the simulated Twilio does). */
export function verbsOf(twiml: string): Verb[] {
  const convert = (nodes: Array<Record<string, unknown>>): Verb[] =>
    nodes.flatMap((node) => {
      const verb = Object.keys(node).find((k) => k !== ':@');
      if (!verb || verb === '#text') return [];
      const children = (node[verb] as Array<Record<string, unknown>>) ?? [];
      const text = children.map((c) => (typeof c['#text'] === 'string' ? c['#text'] : '')).join('').trim();
      return [{ verb, attrs: (node[':@'] as Record<string, string>) ?? {}, text, children: convert(children) }];
    });
  return convert(parseTwiml(twiml));
}

/** A hold: the hold phrase (said or played) or a pause, then back to `/continue`; not a reply's first pieces. */
function isHold(twiml: string): boolean {
  const verbs = verbsOf(twiml);
  const [first, last] = [verbs[0], verbs.at(-1)];
  const holding = first?.verb === 'Pause' || (first?.verb === 'Say' && first.text === PHRASES.hold) || (first?.verb === 'Play' && first.text.includes(phraseAudioPath('hold')));
  return holding && last?.verb === 'Redirect' && last.text.startsWith(`${PUBLIC_BASE_URL}/continue`);
}

export interface SegmentResult {
  /** The last TwiML Twilio received in this segment. */
  twiml: string;
  /** Every TwiML document of the segment (holds first, when the service was slow). */
  documents: string[];
  record: CallRecord;
}

export interface Vendors {
  agent: FakeAgent;
  eleven: FakeElevenLabs;
}

/**
 * One call placed along one path. Runs each segment's webhook when the path
 * reaches the segment's first step; state checks then read `result`.
 */
export class PathDriver {
  readonly steps: ModelStep[];
  readonly segments: Segment[];
  readonly callSid: string;
  result: SegmentResult | undefined;
  readonly #vendors: Vendors;
  readonly #dataDir = mkdtempSync(join(tmpdir(), 'heyai-model-'));
  readonly #clock = { offset: 0 };
  #service: RunningService | undefined;
  #call: SimulatedCall | undefined;
  /** Phrases the current instance has synthesised: they are cached, ElevenLabs is not asked again. */
  #voicedPhrases = new Set<string>();
  #restarts = 0;

  constructor(steps: ModelStep[], callSid: string, vendors: Vendors) {
    this.steps = steps;
    this.segments = planPath(steps);
    this.callSid = callSid;
    this.#vendors = vendors;
  }

  get service(): RunningService {
    if (!this.#service) throw new Error('the service is not running');
    return this.#service;
  }

  get restarts(): number {
    return this.#restarts;
  }

  segmentAt(index: number): Segment | undefined {
    return this.segments.find((s) => s.first <= index && index <= s.last);
  }

  /** Runs the webhook of the segment that starts at this step, if one does. */
  async runStepEvent(index: number): Promise<void> {
    const segment = this.segments.find((s) => s.first === index);
    if (!segment) return;
    await this.#ensureInstance(segment);
    const { agent, eleven } = this.#vendors;
    agent.setBehaviour(segment.agent ? agentScript(segment.agent, () => this.#jumpPastDeadline()) : { kind: 'hang' });
    eleven.setBehaviour(voiceBehaviour(segment.voice?.outcome ?? 'audio'));
    if (segment.jumpBeforeRequest) this.#jumpPastDeadline();

    const documents: string[] = [];
    let answer = await this.#webhook(segment.request.path, segment.request.form);
    documents.push(answer);
    if (segment.answer === 'rendered') {
      // A slow moment on a busy machine: the service holds and Twilio follows the redirect, as it would.
      for (let round = 0; isHold(answer); round++) {
        if (round >= MAX_CONTINUE_ROUNDS) throw new Error(`still on hold after ${MAX_CONTINUE_ROUNDS} /continue rounds`);
        answer = await this.#webhook('/continue', {});
        documents.push(answer);
      }
    }
    const prompt = segment.voice?.prompt;
    if (prompt?.kind === 'phrase' && segment.voice?.outcome !== 'fail') this.#voicedPhrases.add(prompt.key);

    let record = await this.service.service.store.getRecord(this.callSid);
    for (const started = Date.now(); segment.awaitStored && !record?.turns.at(-1)?.written; ) {
      if (Date.now() - started > STORED_WITHIN_MS) throw new Error(`the whole answer was not stored within ${STORED_WITHIN_MS} ms`);
      await new Promise((resolve) => setTimeout(resolve, 20));
      record = await this.service.service.store.getRecord(this.callSid);
    }
    if (!record) throw new Error(`no record stored for ${this.callSid}`);
    this.result = { twiml: answer, documents, record };
  }

  /** Where the expected audio lives, for a prompt voiced by ElevenLabs: one path per piece of a reply. */
  audioPathsOf(context: CallContext): string[] {
    const { prompt } = context;
    const turn = context.turns.at(-1);
    if (prompt.kind === 'phrase' || !prompt.pieces || !turn) {
      return [prompt.kind === 'phrase' ? phraseAudioPath(prompt.key) : replyAudioPath(this.callSid, prompt.key)];
    }
    // The prompt's pieces are the last of the turn's; the first piece of a reply keeps the key `t<turn>`.
    const first = (turn.pieces?.length ?? 0) - prompt.pieces.length;
    return prompt.pieces.map((_, i) => replyAudioPath(this.callSid, pieceKey(turn.index, first + i)));
  }

  /** Fetches a `<Play>` URL the way Twilio would (public URL mapped to the loopback address). */
  async fetchAudio(url: string): Promise<{ status: number; contentType: string; bytes: number }> {
    const target = this.service.address + url.slice(PUBLIC_BASE_URL.length);
    const response = await fetch(target);
    const bytes = (await response.arrayBuffer()).byteLength;
    return { status: response.status, contentType: response.headers.get('content-type') ?? '', bytes };
  }

  async close(): Promise<void> {
    await this.#service?.close();
    this.#service = undefined;
    rmSync(this.#dataDir, { recursive: true, force: true });
  }

  async #ensureInstance(segment: Segment) {
    const prompt = segment.voice?.prompt;
    const needsColdCache = prompt?.kind === 'phrase' && segment.voice?.outcome !== 'audio' && this.#voicedPhrases.has(prompt.key);
    if (this.#service && !needsColdCache && !segment.freshInstance) return;
    if (this.#service) {
      // The phrase is cached here, so ElevenLabs would not be asked, or the path wants the
      // other instance's view: the webhook goes to a fresh instance (Cloud Run runs many),
      // which loads the call from the store.
      const previous = this.segments[this.segments.indexOf(segment) - 1];
      if (previous?.answer === 'hold') throw new Error('cannot move a call to a fresh instance while a turn is in flight');
      await this.#service.close();
      this.#restarts += 1;
    }
    this.#service = await startService(
      {
        KOOZIE_AGENT_URI: this.#vendors.agent.url,
        ELEVENLABS_API_KEY: ELEVENLABS_KEY,
        ELEVEN_VOICE_ID: 'voice-model',
        ELEVENLABS_BASE_URL: this.#vendors.eleven.url,
        WEBHOOK_DEADLINE_MS: String(WEBHOOK_DEADLINE_MS),
        AGENT_TIMEOUT_MS: String(AGENT_TIMEOUT_MS),
        CALL_MAX_TURNS: String(MODEL_MAX_TURNS),
        LOG_LEVEL: 'warn',
      },
      { dataDir: this.#dataDir, now: () => Date.now() + this.#clock.offset },
    );
    this.#voicedPhrases = new Set();
    this.#call = this.#service.call({ callSid: this.callSid });
  }

  #jumpPastDeadline() {
    this.#clock.offset += AGENT_TIMEOUT_MS + 1_000;
  }

  async #webhook(path: string, form: Record<string, string>): Promise<string> {
    const { status, body } = await this.#call!.webhook(path, form);
    if (status !== 200) throw new Error(`${path} answered ${status}: ${body.slice(0, 200)}`);
    return body;
  }
}
