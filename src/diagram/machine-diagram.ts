/**
 * The machine graph written out for people and tools:
 *
 * - `toMermaid(graph)`: a Mermaid `stateDiagram-v2`, edges labelled with event and
 *   guard names, each state's description as a note. Same machine, same text, byte
 *   for byte: CI compares it with the committed file.
 * - `toStatelyConfig(machine)`: the machine config as JSON, the shape Stately's
 *   editor imports (and `createMachine` accepts). Implementations stay in code:
 *   guards and actors appear by name, inline actions as their built-in type
 *   (`xstate.assign`), functions such as the context factory are left out.
 *
 * @see https://mermaid.js.org/syntax/stateDiagram.html
 * @see https://stately.ai/docs/studio (import a machine config)
 */
import type { AnyStateMachine } from 'xstate';
import type { GraphEdge, GraphState, MachineGraph } from './machine-graph.ts';

export const GENERATED_NOTICE = 'Generated from machines/call.machine.ts by `npm run diagram`; do not edit by hand.';

/** Where the generated files live, relative to the repository root. */
export const DIAGRAM_FILES = {
  mermaid: 'docs/diagram/call-machine.mmd',
  stately: 'docs/diagram/call-machine.json',
  svg: 'docs/diagram/call-machine.svg',
} as const;

/** Notes are wrapped to keep the .mmd readable in a diff (Mermaid may wrap them narrower when drawing). */
const NOTE_WIDTH = 30;

export function toMermaid(graph: MachineGraph): string {
  const lines: string[] = [
    '---',
    `title: ${graph.machineId} machine`,
    '---',
    `%% ${GENERATED_NOTICE}`,
    'stateDiagram-v2',
  ];
  const childrenOf = (parent: string | undefined) => graph.states.filter((s) => s.parent === parent);

  const writeStates = (parent: string | undefined, indent: string) => {
    const children = childrenOf(parent);
    const initial = children.find((s) => s.initial);
    if (initial) lines.push(`${indent}[*] --> ${mermaidId(initial.id)}`);
    for (const state of children) {
      if (childrenOf(state.id).length > 0) {
        lines.push(`${indent}state ${mermaidId(state.id)} {`);
        writeStates(state.id, `${indent}  `);
        lines.push(`${indent}}`);
      }
      if (state.type === 'final') lines.push(`${indent}${mermaidId(state.id)} --> [*]`);
    }
  };
  writeStates(undefined, '  ');

  for (const edge of graph.edges) lines.push(`  ${mermaidEdge(edge)}`);
  // Notes come last: Mermaid needs a state declared (by an edge) before a note attaches to it.
  for (const state of graph.states) {
    if (!state.description) continue;
    lines.push(`  note right of ${mermaidId(state.id)}`);
    for (const line of wrap(state.description, NOTE_WIDTH)) lines.push(`    ${line}`);
    lines.push('  end note');
  }

  const tagged = new Map<string, GraphState[]>();
  for (const state of graph.states) {
    for (const tag of state.tags) tagged.set(tag, [...(tagged.get(tag) ?? []), state]);
  }
  for (const tag of [...tagged.keys()].sort()) {
    lines.push(`  classDef ${mermaidId(tag)} ${TAG_STYLES[tag] ?? 'font-style:italic'}`);
    lines.push(`  class ${tagged.get(tag)!.map((s) => mermaidId(s.id)).join(', ')} ${mermaidId(tag)}`);
  }
  return `${lines.join('\n')}\n`;
}

/** How tagged states look: where Twilio hears TwiML, and where the service is waiting on a vendor. */
const TAG_STYLES: Record<string, string> = {
  renderable: 'stroke-width:3px',
  working: 'stroke-dasharray:4 3',
};

/** The statement drawing an edge; Mermaid numbers edges in the order of these statements. */
export function mermaidEdge(edge: GraphEdge): string {
  return `${mermaidId(edge.source)} --> ${mermaidId(edge.target)} : ${mermaidText(edge.label)}`;
}

/** Mermaid state ids are plain words: `parent.child` becomes `parent__child`. */
export function mermaidId(stateId: string): string {
  return stateId.replace(/[^A-Za-z0-9_]/g, '__');
}

function mermaidText(text: string): string {
  // `;` ends a statement and `#` starts an entity in Mermaid: keep them out of the text.
  return text.replace(/;/g, ',').replace(/#/g, ' ').replace(/\s+/g, ' ').trim();
}

function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of mermaidText(text).split(' ')) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line ? `${line} ${word}` : word;
    }
  }
  if (line) lines.push(line);
  return lines;
}

export function toStatelyConfig(machine: AnyStateMachine): string {
  return `${JSON.stringify(machine.config, configReplacer, 2)}\n`;
}

function configReplacer(this: unknown, key: string, value: unknown): unknown {
  if (typeof value === 'function') {
    // Built-in action creators (assign, raise, ...) carry their type; other functions are code, not config.
    const type = (value as { type?: unknown }).type;
    return typeof type === 'string' ? { type } : undefined;
  }
  if (key === 'context' || key === 'input') return undefined;
  return value;
}
