/**
 * The committed diagram is the machine: docs/diagram/ must be what
 * `npm run diagram` generates from machines/call.machine.ts today, so `npm test`
 * in CI fails when someone changes the conversation and forgets the diagram.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { createMachine } from 'xstate';
import { describe, expect, it } from 'vitest';
import { callMachine } from '../../machines/call.machine.ts';
import { DIAGRAM_FILES, toMermaid, toStatelyConfig } from '../../src/diagram/machine-diagram.ts';
import { edgesAlong, machineGraph } from '../../src/diagram/machine-graph.ts';

const ROOT = join(import.meta.dirname, '../..');
const committed = (file: string) => readFileSync(join(ROOT, file), 'utf8');
const graph = machineGraph(callMachine);
const STALE = 'The committed diagram no longer matches machines/call.machine.ts: run `npm run diagram` and commit docs/diagram/.';

describe('the committed diagram', () => {
  it('is the Mermaid diagram of the machine as it is now', () => {
    expect(committed(DIAGRAM_FILES.mermaid), STALE).toBe(toMermaid(graph));
  });

  it('is the Stately JSON of the machine as it is now', () => {
    expect(committed(DIAGRAM_FILES.stately), STALE).toBe(toStatelyConfig(callMachine));
  });

  it('names every state, event and guard of the machine', () => {
    const mermaid = committed(DIAGRAM_FILES.mermaid);
    for (const state of Object.keys(callMachine.root.states)) expect(mermaid).toMatch(new RegExp(`\\b${state}\\b`));
    for (const event of callMachine.events) {
      const actor = /^xstate\.(done|error)\.actor\.(.+)$/.exec(event);
      const invoked = actor ? Object.values(callMachine.root.states).flatMap((s) => s.invoke).find((i) => i.id === actor[2]) : undefined;
      expect(mermaid, event).toContain(actor ? `${actor[1]}: ${String(invoked?.src)}` : `: ${event}`);
    }
    for (const guard of Object.keys(callMachine.implementations.guards)) expect(mermaid, guard).toContain(`[${guard}]`);
    for (const edge of graph.edges) expect(mermaid, edge.id).toContain(`--> ${edge.target} : ${edge.label}`);
  });

  it('has every state and edge tagged in the SVG, for the admin page to highlight', () => {
    const svg = committed(DIAGRAM_FILES.svg);
    for (const state of graph.states) expect(svg, state.id).toContain(`data-state="${state.id}"`);
    for (const edge of graph.edges) expect(svg, edge.id).toContain(`data-machine-edge="${edge.id}"`);
    expect(svg).not.toContain('parsererror');
  });

  it('imports back as the same machine (what Stately’s editor reads)', () => {
    const imported = createMachine(JSON.parse(committed(DIAGRAM_FILES.stately)));
    const again = machineGraph(imported);
    expect(again.states).toEqual(graph.states);
    expect(again.edges).toEqual(graph.edges);
  });

  it('passes `npm run diagram:check`', async () => {
    const { stdout } = await promisify(execFile)(process.execPath, [join(ROOT, 'scripts/diagram.ts'), '--check'], { cwd: ROOT });
    expect(stdout).toContain(`diagram is up to date (${graph.states.length} states, ${graph.edges.length} edges)`);
  });
});

describe('the machine graph', () => {
  it('has one edge per transition branch, and root transitions from every state a call rests in', () => {
    expect(graph.states.map((s) => [s.id, s.transient])).toEqual([
      ['greeting', true],
      ['listening', false],
      ['thinking', false],
      ['errorFallback', true],
      ['speaking', false],
      ['replying', false],
      ['terminating', false],
      ['ended', false],
    ]);
    expect(graph.edges.filter((e) => e.event === 'HANGUP').map((e) => e.source)).toEqual(['listening', 'thinking', 'speaking', 'replying', 'terminating']);
    expect(graph.edges.find((e) => e.id === 'thinking|SLOW|1')).toMatchObject({ internal: true, target: 'thinking', label: 'SLOW [else]' });
    expect(graph.edges.find((e) => e.id === 'speaking|SLOW|0')).toMatchObject({ internal: true, target: 'speaking', label: 'SLOW' });
    expect(graph.edges.find((e) => e.id === 'replying|xstate.done.actor.rest|0')).toMatchObject({ internal: true, target: 'replying', label: 'done: collectReply' });
    expect(graph.edges.find((e) => e.id === 'speaking|xstate.error.actor.voice|0')?.label).toBe('error: voicePrompt [isEnding]');
  });

  it('finds the edges a stored path went along, both branches where guards cannot be told apart', () => {
    const along = edgesAlong(graph, [
      { state: 'greeting', event: 'CALL_STARTED' },
      { state: 'speaking', event: 'xstate.init' },
      { state: 'listening', event: 'xstate.done.actor.voice' },
      { state: 'speaking', event: 'SILENCE' },
      { state: 'listening', event: 'xstate.error.actor.voice' },
      { state: 'thinking', event: 'SPEECH' },
      { state: 'errorFallback', event: 'xstate.error.actor.agent' },
      { state: 'speaking', event: 'xstate.error.actor.agent' },
      { state: 'ended', event: 'HANGUP' },
    ]);
    expect(along.map((edges) => edges.map((e) => e.id))).toEqual([
      [],
      ['greeting|always|0'],
      ['speaking|xstate.done.actor.voice|2'],
      ['listening|SILENCE|0', 'listening|SILENCE|1'],
      ['speaking|xstate.error.actor.voice|1'],
      ['listening|SPEECH|2'],
      ['thinking|xstate.error.actor.agent|0'],
      ['errorFallback|always|0', 'errorFallback|always|1'],
      ['speaking|HANGUP|0'],
    ]);
  });
});
