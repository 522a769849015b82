/**
 * `npm run diagram`: writes the call machine as a diagram, generated from the
 * machine definition (machines/call.machine.ts), never drawn by hand:
 *
 * - docs/diagram/call-machine.mmd   Mermaid stateDiagram-v2 (events, guards, notes)
 * - docs/diagram/call-machine.json  machine config JSON, importable in Stately's editor
 * - docs/diagram/call-machine.svg   the Mermaid diagram rendered in headless Chromium,
 *   every state node tagged `data-state="<id>"` and every edge (path and label)
 *   `data-machine-edge="<edge id>"`, so the admin page can highlight a call's path
 *
 * The same machine gives the same files, byte for byte (the SVG on the same Chromium).
 *
 * `npm run diagram:check` regenerates the .mmd and .json in memory and exits 1 when
 * they differ from the committed files (CI). The SVG is not compared: Chromium
 * versions lay text out slightly differently; it is rendered whenever the files are
 * written.
 *
 * @see https://mermaid.js.org/config/usage.html#api-usage
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { callMachine } from '../machines/call.machine.ts';
import { DIAGRAM_FILES, mermaidEdge, mermaidId, toMermaid, toStatelyConfig } from '../src/diagram/machine-diagram.ts';
import { machineGraph, type MachineGraph } from '../src/diagram/machine-graph.ts';
import { launchChromium } from './chromium.ts';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const MERMAID_JS = join(ROOT, 'node_modules/mermaid/dist/mermaid.min.js');
/** The SVG's root element id; Mermaid scopes its styles to it. */
const SVG_ID = 'call-machine';

const graph = machineGraph(callMachine);
const generated = {
  [DIAGRAM_FILES.mermaid]: toMermaid(graph),
  [DIAGRAM_FILES.stately]: toStatelyConfig(callMachine),
};

if (process.argv.includes('--check')) {
  const stale = Object.entries(generated).filter(([file, text]) => readOrEmpty(join(ROOT, file)) !== text);
  if (stale.length > 0) {
    process.stderr.write(
      `The committed diagram no longer matches machines/call.machine.ts: ${stale.map(([file]) => file).join(' and ')} ${stale.length === 1 ? 'differs' : 'differ'}.\n` +
        'Run `npm run diagram` and commit docs/diagram/.\n',
    );
    process.exit(1);
  }
  process.stdout.write(`diagram is up to date (${graph.states.length} states, ${graph.edges.length} edges)\n`);
} else {
  for (const [file, text] of Object.entries(generated)) write(file, text);
  write(DIAGRAM_FILES.svg, await renderSvg(generated[DIAGRAM_FILES.mermaid]!, graph));
}

function write(file: string, text: string) {
  const path = join(ROOT, file);
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, text);
  process.stdout.write(`wrote ${file}\n`);
}

function readOrEmpty(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

/**
 * Mermaid numbers edges `edge0`, `edge1`... in the order of the `-->` statements;
 * this maps each number back to the machine edge (or none, for `[*]` markers).
 */
function edgeOrder(mermaid: string, machine: MachineGraph): Array<{ id: string; label: string } | null> {
  const byLine = new Map(machine.edges.map((e) => [mermaidEdge(e), e]));
  const order: Array<{ id: string; label: string } | null> = [];
  for (const line of mermaid.split('\n')) {
    const statement = line.trim();
    if (!/^\S+ --> \S+/.test(statement)) continue;
    const edge = byLine.get(statement);
    order.push(edge ? { id: edge.id, label: edge.label } : null);
  }
  const mapped = order.filter(Boolean).length;
  if (mapped !== machine.edges.length) throw new Error(`mapped ${mapped} of ${machine.edges.length} edges to Mermaid statements`);
  return order;
}

async function renderSvg(mermaid: string, machine: MachineGraph): Promise<string> {
  const edges = edgeOrder(mermaid, machine);
  const states = Object.fromEntries(machine.states.map((s) => [mermaidId(s.id), s.id]));
  const browser = await launchChromium();
  try {
    const page = await browser.newPage();
    await page.setContent('<!doctype html><html><body></body></html>');
    await page.addScriptTag({ path: MERMAID_JS });
    const result = await page.evaluate(
      async ({ text, svgId, edges, states }) => {
        const mermaidApi = (globalThis as unknown as { mermaid: MermaidApi }).mermaid;
        // Some shapes are drawn with random jitter: a fixed sequence makes the SVG the same on every run.
        let seed = 1;
        Math.random = () => {
          seed = (seed * 1_664_525 + 1_013_904_223) % 4_294_967_296;
          return seed / 4_294_967_296;
        };
        mermaidApi.initialize({ startOnLoad: false, securityLevel: 'strict', theme: 'default', handDrawnSeed: 1 });
        const { svg } = await mermaidApi.render(svgId, text);
        // Mermaid's labels are HTML inside <foreignObject> (`<br>`, not `<br/>`): parse as HTML,
        // then serialise as XML so the file is a well-formed standalone SVG.
        const holder = document.createElement('div');
        holder.innerHTML = svg;
        const root = holder.querySelector('svg');
        const problems: string[] = root ? [] : ['Mermaid produced no <svg>'];
        const taggedStates = new Set<string>();
        for (const node of holder.querySelectorAll('g.node[id]')) {
          const match = new RegExp(`^${svgId}-state-(.+)-\\d+$`).exec(node.id);
          const state = match ? states[match[1]!] : undefined;
          if (!state) continue;
          node.setAttribute('data-state', state);
          taggedStates.add(state);
        }
        const taggedEdges = new Set<string>();
        for (const element of holder.querySelectorAll('[data-id^="edge"]')) {
          const index = /^edge(\d+)$/.exec(element.getAttribute('data-id') ?? '')?.[1];
          const edge = index === undefined ? undefined : edges[Number(index)];
          if (!edge) continue;
          element.setAttribute('data-machine-edge', edge.id);
          if (element.tagName === 'g' && element.textContent?.trim() !== edge.label) {
            problems.push(`label of ${edge.id} reads "${element.textContent?.trim()}"`);
          }
          taggedEdges.add(edge.id);
        }
        for (const state of Object.values(states)) if (!taggedStates.has(state)) problems.push(`no node for state ${state}`);
        for (const edge of edges) if (edge && !taggedEdges.has(edge.id)) problems.push(`no path for edge ${edge.id}`);
        const xml = root ? new XMLSerializer().serializeToString(root) : '';
        const reparsed = new DOMParser().parseFromString(xml, 'image/svg+xml');
        if (reparsed.querySelector('parsererror')) problems.push('the serialised SVG is not well-formed XML');
        return { svg: xml, problems };
      },
      { text: mermaid, svgId: SVG_ID, edges, states },
    );
    if (result.problems.length > 0) throw new Error(`the rendered SVG does not match the machine: ${result.problems.join('; ')}`);
    return `${result.svg}\n`;
  } finally {
    await browser.close();
  }
}

interface MermaidApi {
  initialize(config: Record<string, unknown>): void;
  render(id: string, text: string): Promise<{ svg: string }>;
}
