/**
 * The call machine as a test model for `xstate/graph`.
 *
 * `createTestModel` walks a machine with pure transitions and refuses invoked
 * actors. The model is therefore the call machine's own definition with each
 * `invoke` turned into the events its actor would send: `xstate.done.actor.agent`
 * / `xstate.error.actor.agent` for the agent, `...voice` for speech,
 * `xstate.done.actor.rest` for the whole answer stored while replying. States,
 * guards and actions are the machine's, untouched; only who sends those events
 * changes (here the path, in the service the invoked actors).
 *
 * Vertices are abstract: the state plus the counters the guards read (silences,
 * failures, ending) and whether the reply's whole answer is stored. Timestamps,
 * turns and the path would make every vertex new and the graph infinite.
 *
 * @see https://stately.ai/docs/xstate-test
 */
import { createActor, createMachine, initialTransition, transition, type AnyActorRef, type AnyStateMachine, type InspectionEvent, type SnapshotFrom } from 'xstate';
import { createTestModel } from 'xstate/graph';
import {
  callMachine,
  LIMITS,
  type AgentTurnOutput,
  type CallContext,
  type CallEvent,
  type CallInput,
  type VoiceOutput,
  type WrittenReply,
  stateName,
} from '../../machines/call.machine.ts';
import { edgeIdOf, machineGraph } from '../../src/diagram/machine-graph.ts';

export const MODEL_CALL_SID = `CA${'0'.repeat(32)}`;
export const AGENT_TIMEOUT_MS = 5_000;
/** Far past any turn deadline the model can set. */
export const LATE = 10 ** 13;

/** Turns a model call may have: small, so paths reach the turn limit, and no smaller than the failures that end a call (the service under test is configured the same, CALL_MAX_TURNS). */
export const MODEL_MAX_TURNS = LIMITS.failures;

export const MODEL_INPUT: CallInput = { callSid: MODEL_CALL_SID, from: '+15550100001', to: '+15550100002', at: 0, agentTimeoutMs: AGENT_TIMEOUT_MS, maxTurns: MODEL_MAX_TURNS };

/** The agent's answer, or the first sentence of a longer one that it writes in two bursts. */
export const AGENT_REPLY = 'We are open from nine to five.';
/** The rest of the longer answer: the caller hears it after the first sentence (`replying`, CONTINUE). */
export const AGENT_REPLY_REST = 'On Saturdays we open at ten.';
export const CALLER_QUESTION = 'What are your opening hours?';
export const CALLER_GOODBYE = 'Thanks, goodbye!';

/** The machine's own events, and those its invoked actors send (plus the start of a path). */
export type ModelEvent =
  | CallEvent
  | { type: 'xstate.init' }
  | { type: 'xstate.done.actor.agent'; output: AgentTurnOutput }
  | { type: 'xstate.error.actor.agent'; error: string }
  | { type: 'xstate.done.actor.voice'; output: VoiceOutput }
  | { type: 'xstate.error.actor.voice'; error: string | { message: string; pieces: Array<{ text: string }> } }
  | { type: 'xstate.done.actor.rest'; output: WrittenReply };

/**
 * One sample: an event, and (optionally) where it can happen. The machine's own
 * `can` decides where an event is handled; `when` narrows a sample to the
 * situations the service can really produce it in (the rest of a reply is voiced
 * only after its first pieces, for example).
 */
export interface EventSample {
  event: ModelEvent;
  when?: (context: CallContext) => boolean;
}

/** Speaking the start of this turn's reply (nothing of it heard yet). */
function replyStarts(context: CallContext): boolean {
  const turn = context.turns.at(-1);
  return context.prompt.kind === 'reply' && turn !== undefined && (turn.pieces?.length ?? 0) === 0;
}
/** Speaking the rest of this turn's reply, after Twilio's PLAYED. */
function replyGoesOn(context: CallContext): boolean {
  const turn = context.turns.at(-1);
  return context.prompt.kind === 'reply' && turn !== undefined && (turn.pieces?.length ?? 0) > 0;
}
function answerStored(context: CallContext): boolean {
  return context.turns.at(-1)?.written !== undefined;
}

/**
 * Samples of every event the model may take. QA adds a sample here to make the
 * generated paths try it; each type needs an executor in path-driver.ts.
 */
export const EVENT_SAMPLES: EventSample[] = [
  { event: { type: 'SPEECH', text: CALLER_QUESTION, at: 0 } },
  { event: { type: 'SPEECH', text: CALLER_GOODBYE, at: 0 } },
  { event: { type: 'SILENCE', at: 0 } },
  { event: { type: 'xstate.done.actor.agent', output: { text: AGENT_REPLY, firstChunkAt: 0, at: 0 } } },
  { event: { type: 'xstate.error.actor.agent', error: 'agent answered 500' } },
  // A phrase, or a whole reply, voiced in one go.
  { event: { type: 'xstate.done.actor.voice', output: { at: 0 } }, when: (c) => !replyGoesOn(c) },
  // The first sentence of a longer answer is voiced while the agent writes the rest.
  {
    event: { type: 'xstate.done.actor.voice', output: { at: 0, pieces: [{ text: AGENT_REPLY, audio: 'voiced' }], more: true } },
    when: replyStarts,
  },
  // The rest, voiced from the agent's stream (which reports when the agent finished)...
  {
    event: { type: 'xstate.done.actor.voice', output: { at: 0, agentCompleteAt: 0, pieces: [{ text: AGENT_REPLY_REST, audio: 'voiced' }] } },
    when: (c) => replyGoesOn(c) && !answerStored(c),
  },
  // ...or from the answer stored while replying (on an instance that did not stream it).
  {
    event: { type: 'xstate.done.actor.voice', output: { at: 0, pieces: [{ text: AGENT_REPLY_REST, audio: 'voiced' }] } },
    when: (c) => replyGoesOn(c) && answerStored(c),
  },
  { event: { type: 'xstate.error.actor.voice', error: 'speech answered 500' }, when: (c) => !replyGoesOn(c) },
  // Synthesis of the rest fails: the phone reads it.
  { event: { type: 'xstate.error.actor.voice', error: { message: 'speech answered 500', pieces: [{ text: AGENT_REPLY_REST }] } }, when: replyGoesOn },
  { event: { type: 'xstate.done.actor.rest', output: { pieces: [AGENT_REPLY, AGENT_REPLY_REST], completeAt: 0 } } },
  { event: { type: 'PLAYED', at: 0 } },
  { event: { type: 'DIGITS', digits: '5', at: 0 } },
  { event: { type: 'HANGUP', at: 0, status: 'completed' } },
  { event: { type: 'SLOW', at: 1 } },
  { event: { type: 'SLOW', at: LATE } },
];

/** How an agent turn of a path ends, as a driver scripts the fake agent for it. */
export type AgentOutcome = 'reply' | 'fail' | 'late' | 'never';

/** A SLOW before the turn deadline (the caller waits); one at LATE finds the deadline passed. */
export function isEarlySlow(event: ModelEvent): boolean {
  return event.type === 'SLOW' && event.at < LATE;
}

/** The event that ends an agent turn of a path: its answer, its failure, a late SLOW, the hang-up, or the line dropping. */
export function endsAgentTurn(event: ModelEvent): boolean {
  return (
    event.type === 'xstate.done.actor.agent' ||
    event.type === 'xstate.error.actor.agent' ||
    event.type === 'HANGUP' ||
    event.type === 'RECONNECTED' ||
    (event.type === 'SLOW' && !isEarlySlow(event))
  );
}

export function agentOutcome(event: ModelEvent): AgentOutcome {
  switch (event.type) {
    case 'xstate.done.actor.agent':
      return 'reply';
    case 'xstate.error.actor.agent':
      return 'fail';
    case 'SLOW':
      return 'late';
    default:
      return 'never';
  }
}

/** The machine with its invocations replaced by the events they send. */
export function withInvocationsAsEvents(machine: AnyStateMachine): AnyStateMachine {
  const convert = (state: Record<string, unknown>): Record<string, unknown> => {
    const { invoke, states, ...rest } = state;
    const converted: Record<string, unknown> = { ...rest };
    if (invoke) {
      const on = { ...(rest.on as Record<string, unknown> | undefined) };
      for (const definition of [invoke].flat() as Array<{ id?: string; onDone?: unknown; onError?: unknown }>) {
        if (!definition.id) throw new Error('every invoke in the call machine needs an id to be modelled');
        if (definition.onDone) on[`xstate.done.actor.${definition.id}`] = definition.onDone;
        if (definition.onError) on[`xstate.error.actor.${definition.id}`] = definition.onError;
      }
      converted.on = on;
    }
    if (states) {
      converted.states = Object.fromEntries(
        Object.entries(states as Record<string, Record<string, unknown>>).map(([key, child]) => [key, convert(child)]),
      );
    }
    return converted;
  };
  return createMachine(convert(machine.config as unknown as Record<string, unknown>) as never, machine.implementations as never);
}

export const modelMachine = withInvocationsAsEvents(callMachine);
export type ModelSnapshot = SnapshotFrom<typeof modelMachine>;

function abstractState(snapshot: ModelSnapshot): string {
  const context = snapshot.context as CallContext;
  const { silences, failures, ending, prompt } = context;
  const said = prompt.kind === 'reply' ? 'reply' : prompt.key;
  const stored = answerStored(context);
  const turnsUsedUp = context.turns.length >= context.maxTurns;
  return JSON.stringify({ value: snapshot.value, said, silences, failures, ending: ending ?? null, stored, turnsUsedUp, status: snapshot.status });
}

/** The test model of a call started with `input` (the relay model streams its replies: relay-model.ts). */
export function createCallModel(input: CallInput = MODEL_INPUT) {
  return createTestModel(modelMachine, {
    input,
    // Distinct ways into a state are distinct vertices, so shortest paths take every edge.
    serializeState: (state, event, previous) => {
      const via = event && previous && JSON.stringify(previous.value) !== JSON.stringify(state.value)
        ? ` via ${JSON.stringify(event)} from ${JSON.stringify(previous.value)}`
        : '';
      return `${abstractState(state as ModelSnapshot)}${via}`;
    },
  });
}

/**
 * The shortest path to every vertex. Samples are offered in EVENT_SAMPLES order
 * (cheap outcomes before holds), only where the machine takes them.
 */
export function callPaths() {
  return createCallModel().getShortestPaths({
    events: (state: ModelSnapshot) =>
      EVENT_SAMPLES.filter(
        ({ event, when }) => state.status === 'active' && state.can(event as never) && (when?.(state.context as CallContext) ?? true),
      ).map(({ event }) => event),
  } as never);
}

/**
 * The concrete snapshots along a path's events. The generator keeps one snapshot
 * per abstract vertex, whichever way it was first reached, so its snapshots' turns
 * and path may belong to another route into the same vertex; replaying the events
 * gives the ones this path really produces.
 */
export function replay(events: ModelEvent[], input: CallInput = MODEL_INPUT): ModelSnapshot[] {
  const [first, ...rest] = events;
  if (first?.type !== 'xstate.init') throw new Error('a path starts with xstate.init');
  let snapshot = initialTransition(modelMachine, input)[0] as ModelSnapshot;
  const snapshots = [snapshot];
  for (const event of rest) {
    snapshot = transition(modelMachine, snapshot, event as never)[0] as ModelSnapshot;
    snapshots.push(snapshot);
  }
  return snapshots;
}

/** What a set of paths reaches: states entered and edges taken (ids of src/diagram's graph, the edges the diagram draws). */
export interface Coverage {
  states: Set<string>;
  edges: Set<string>;
}

const initialState = machineGraph(callMachine).initial;

/** The states entered and edges taken along a path's events, read from the model machine as it runs. */
export function traceOf(events: ModelEvent[], input: CallInput = MODEL_INPUT): Coverage {
  const trace: Coverage = { states: new Set([initialState]), edges: new Set<string>() };
  let current = initialState;
  const inspect = (event: InspectionEvent) => {
    if (event.type !== '@xstate.microstep') return;
    for (const taken of event._transitions) trace.edges.add(edgeIdOf(taken, current));
    current = stateName((event.snapshot as unknown as { value: unknown }).value);
    trace.states.add(current);
  };
  const actor: AnyActorRef = createActor(modelMachine, { input, inspect });
  actor.start();
  for (const event of events.slice(1)) actor.send(event);
  actor.stop();
  return trace;
}

/** Adds `more` to `into`. */
export function addCoverage(into: Coverage, more: Coverage): void {
  for (const state of more.states) into.states.add(state);
  for (const edge of more.edges) into.edges.add(edge);
}

/** What every one of `paths` reaches, as generated (each path test adds its own trace once it passes). */
export function coverageOfPaths(paths: Array<{ steps: Array<{ event: unknown }> }>, input: CallInput = MODEL_INPUT): Coverage {
  const coverage: Coverage = { states: new Set(), edges: new Set() };
  for (const path of paths) addCoverage(coverage, traceOf(path.steps.map((s) => s.event as ModelEvent), input));
  return coverage;
}
