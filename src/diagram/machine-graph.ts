/**
 * The call machine as a graph of states and edges, read from the machine
 * definition itself (XState's `StateNode`s), never drawn by hand.
 *
 * One graph serves three readers, so they can never disagree about what an edge is:
 * the diagram exporter (`scripts/diagram.ts` → Mermaid), the admin page (which
 * highlights the edges a call took) and the model-based tests (which count the
 * edges their generated paths reached).
 *
 * An edge is one branch of one transition: `SPEECH [callerSaysGoodbye]` and the
 * `SPEECH [else]` after it are two edges. A transition defined on the machine root
 * (HANGUP) can fire from every state the call can rest in, so it is one edge per
 * such state. A state that always leaves at once (an unguarded `always` branch) is
 * transient: the call never rests there and root transitions do not start from it.
 *
 * @see https://stately.ai/docs/transitions
 * @see https://stately.ai/docs/eventless-transitions
 */
import type { AnyStateMachine, AnyStateNode, AnyTransitionDefinition } from 'xstate';

export interface GraphState {
  /** Path from the root, dot-separated: `listening`, or `parent.child` when nested. */
  id: string;
  parent: string | undefined;
  type: string;
  description: string | undefined;
  tags: string[];
  /** Leaves at once through an unguarded `always` branch: the call never rests here. */
  transient: boolean;
  /** The initial state of its parent. */
  initial: boolean;
}

export interface GraphEdge {
  /** Stable id: `<source>|<event or "always">|<branch index>`. */
  id: string;
  source: string;
  /** Equal to `source` for a transition without a target (it stays, runs actions only). */
  target: string;
  /** The machine event type; `null` for an eventless (`always`) transition. */
  event: string | null;
  /** What a reader sees: `SPEECH`, `done: askAgent`, `error: voicePrompt`, `always`. */
  trigger: string;
  /** The guard's name, `else` for the unguarded branch after guarded ones, or undefined. */
  guard: string | undefined;
  /** `trigger [guard]`. */
  label: string;
  /** No target: the state is not left. */
  internal: boolean;
}

export interface MachineGraph {
  machineId: string;
  description: string | undefined;
  /** Id of the machine's initial state. */
  initial: string;
  states: GraphState[];
  edges: GraphEdge[];
}

export function machineGraph(machine: AnyStateMachine): MachineGraph {
  const root = machine.root;
  const states: GraphState[] = [];
  const edges: GraphEdge[] = [];
  const rootTransitions = transitionLists(root);

  const visit = (node: AnyStateNode) => {
    const id = stateIdOf(node);
    const parent = node.parent && node.parent !== root ? stateIdOf(node.parent) : undefined;
    states.push({
      id,
      parent,
      type: node.type,
      description: node.description,
      tags: [...node.tags].sort(),
      transient: isTransient(node),
      initial: node.parent?.initial?.target.includes(node) ?? false,
    });
    for (const list of transitionLists(node)) edges.push(...edgesOf(list, id));
    if (isRestingLeaf(node)) {
      for (const list of rootTransitions) edges.push(...edgesOf(list, id));
    }
    for (const child of Object.values(node.states)) visit(child);
  };
  for (const child of Object.values(root.states)) visit(child);

  const initial = root.initial?.target[0];
  if (!initial) throw new Error(`machine "${root.id}" has no initial state`);
  return { machineId: root.id, description: root.description, initial: stateIdOf(initial), states, edges };
}

/**
 * The edge a transition taken at run time corresponds to. `from` is the state the
 * call was in (it matters for transitions defined on the root, such as HANGUP).
 */
export function edgeIdOf(transition: AnyTransitionDefinition, from: string): string {
  const definedOn = transition.source;
  const source = definedOn.parent ? stateIdOf(definedOn) : from;
  const always = definedOn.always ?? [];
  const index = always.indexOf(transition);
  if (index >= 0) return edgeId(source, null, index);
  const list = definedOn.transitions.get(transition.eventType) ?? [];
  return edgeId(source, transition.eventType, list.indexOf(transition));
}

/** `listening`, or `parent.child`: the path below the machine root. */
export function stateIdOf(node: AnyStateNode): string {
  return node.path.join('.');
}

interface TransitionList {
  event: string | null;
  definedOn: AnyStateNode;
  branches: AnyTransitionDefinition[];
}

function transitionLists(node: AnyStateNode): TransitionList[] {
  const lists: TransitionList[] = [];
  for (const [event, branches] of node.transitions) lists.push({ event, definedOn: node, branches });
  if (node.always?.length) lists.push({ event: null, definedOn: node, branches: node.always });
  return lists;
}

function edgesOf(list: TransitionList, source: string): GraphEdge[] {
  const anyGuarded = list.branches.some((t) => t.guard !== undefined);
  return list.branches.map((transition, index) => {
    const targetNode = transition.target?.[0];
    const target = targetNode ? stateIdOf(targetNode) : source;
    const trigger = triggerOf(list.event, list.definedOn);
    const guard = transition.guard !== undefined ? guardName(transition.guard) : anyGuarded ? 'else' : undefined;
    return {
      id: edgeId(source, list.event, index),
      source,
      target,
      event: list.event,
      trigger,
      guard,
      label: guard ? `${trigger} [${guard}]` : trigger,
      internal: !targetNode,
    };
  });
}

function edgeId(source: string, event: string | null, index: number): string {
  return `${source}|${event ?? 'always'}|${index}`;
}

/** Invoked actors report back as `xstate.done.actor.<id>` / `xstate.error.actor.<id>`. */
function triggerOf(event: string | null, node: AnyStateNode): string {
  if (event === null) return 'always';
  const actor = /^xstate\.(done|error)\.actor\.(.+)$/.exec(event);
  if (actor) {
    const invoke = node.invoke.find((i) => i.id === actor[2]);
    const src = typeof invoke?.src === 'string' ? invoke.src : actor[2];
    return `${actor[1]}: ${src}`;
  }
  const doneState = /^xstate\.done\.state\.(.+)$/.exec(event);
  if (doneState) return 'done';
  return event;
}

function guardName(guard: unknown): string {
  if (typeof guard === 'string') return guard;
  if (guard && typeof guard === 'object' && 'type' in guard && typeof guard.type === 'string') return guard.type;
  return 'inline guard';
}

function isTransient(node: AnyStateNode): boolean {
  return (node.always ?? []).some((t) => t.guard === undefined);
}

/** A leaf where the call can wait for an event: not final, not transient. */
function isRestingLeaf(node: AnyStateNode): boolean {
  return node.type === 'atomic' && !isTransient(node);
}

/**
 * The edges a stored path went along, per step (none for the first). A stored step
 * keeps the state entered and the event that caused it, not which guard passed:
 * where two branches join the same states on the same event (`SILENCE
 * [mayRepromptAgain]` and `SILENCE [else]`) both are returned. An eventless edge
 * is taken on the event that entered its source state. Internal edges (no target)
 * leave no step.
 */
export function edgesAlong(graph: MachineGraph, steps: ReadonlyArray<{ state: string; event: string }>): GraphEdge[][] {
  return steps.map((step, index) => {
    const from = steps[index - 1];
    if (!from) return [];
    const joining = graph.edges.filter((e) => e.source === from.state && e.target === step.state && !e.internal);
    const onEvent = joining.filter((e) => e.event === step.event);
    return onEvent.length > 0 ? onEvent : joining.filter((e) => e.event === null);
  });
}
