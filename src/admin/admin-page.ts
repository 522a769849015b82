/**
 * The admin console page, rendered on the server as one HTML document with no
 * script: recent calls, the call machine's diagram and, for a chosen call, the
 * path it took, highlighted on the diagram and listed as a timeline (state, time,
 * the edge it came along, what was said).
 *
 * The diagram is the SVG `npm run diagram` renders, whose nodes carry
 * `data-state` and whose edges carry `data-machine-edge`; highlighting adds the
 * class `visited` to the ones the call went through. No script and no outside
 * resource: the page works behind the strictest CSP and needs only the one
 * authenticated request.
 *
 * @see ../diagram/machine-graph.ts (edgesAlong: which edges a stored path went along)
 */
import type { CallRecord, CallSummary } from '../store/call-store.ts';
import { edgesAlong, type MachineGraph } from '../diagram/machine-graph.ts';

export interface TimelineRow {
  step: number;
  state: string;
  at: number;
  /** Seconds since the call started. */
  sinceStartSec: number;
  /** The edge (or edges, when the record cannot tell guarded branches apart) the call came along. */
  via: string;
  /** What was said or happened: the caller's words, the agent's reply, a failure, the end. */
  said: string;
}

export function callTimeline(record: CallRecord, graph: MachineGraph): TimelineRow[] {
  const edges = edgesAlong(graph, record.path);
  let turn = -1;
  return record.path.map((step, index) => {
    const previous = record.path[index - 1];
    if (step.state === 'thinking') turn += 1;
    const current = record.turns[turn];
    let said = '';
    if (step.state === 'thinking' && current) said = `Caller: “${current.caller}”`;
    else if (step.state === 'speaking' && step.event === 'xstate.done.actor.agent' && current?.reply) said = `Agent: “${current.reply}”`;
    else if (step.state === 'errorFallback' && current?.failure) said = `Failed: ${current.failure}`;
    else if (step.state === 'speaking' && previous?.state === 'listening' && step.event === 'SPEECH') said = 'Caller said goodbye';
    else if (step.state === 'speaking' && step.event === 'SILENCE') said = 'Caller said nothing';
    else if (step.state === 'terminating' && record.endReason) said = `Ending: ${record.endReason}`;
    else if (step.state === 'ended') said = `Call ${record.status}${record.endReason ? ` (${record.endReason})` : ''}`;
    const via = edges[index]!.map((e) => e.label).join(' or ') || (index === 0 ? 'call answered' : step.event);
    return {
      step: index + 1,
      state: step.state,
      at: step.at,
      sinceStartSec: Math.round((step.at - record.startedAt) / 100) / 10,
      via,
      said,
    };
  });
}

/** Adds the class `visited` to the diagram's nodes and edges the call went through. */
export function highlightDiagram(svg: string, visited: { states: ReadonlySet<string>; edges: ReadonlySet<string> }): string {
  return svg.replace(/<[a-zA-Z]+\s[^>]*\bdata-(state|machine-edge)="([^"]*)"[^>]*>/g, (tag, kind: string, id: string) => {
    const hit = kind === 'state' ? visited.states.has(id) : visited.edges.has(id);
    return hit ? withClass(tag, 'visited') : tag;
  });
}

function withClass(tag: string, name: string): string {
  if (/\sclass="/.test(tag)) return tag.replace(/\sclass="([^"]*)"/, (_m, classes: string) => ` class="${classes} ${name}"`);
  return tag.replace(/\s*(\/?)>$/, ` class="${name}"$1>`);
}

export interface AdminPageInput {
  graph: MachineGraph;
  /** The rendered diagram; undefined when this build has none (docs/diagram not shipped). */
  svg: string | undefined;
  calls: CallSummary[];
  filters: { number?: string | undefined; limit: number };
  selected?: CallRecord | undefined;
  /** A call asked for that the store does not have. */
  missing?: string | undefined;
  now: number;
}

export function renderAdminPage(input: AdminPageInput): string {
  const { graph, selected } = input;
  const timeline = selected ? callTimeline(selected, graph) : [];
  const visitedStates = new Set(selected?.path.map((p) => p.state));
  const visitedEdges = new Set(selected ? edgesAlong(graph, selected.path).flat().map((e) => e.id) : []);
  const diagram = input.svg
    ? highlightDiagram(input.svg, { states: visitedStates, edges: visitedEdges })
    : '<p class="note">The diagram is not part of this build (docs/diagram/call-machine.svg is missing). Run <code>npm run diagram</code>.</p>';

  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${selected ? `Call ${escapeHtml(selected.callSid)} · ` : ''}HeyAI admin</title>
<style>${STYLE}</style>
</head>
<body>
<header>
  <h1><a href="/admin">HeyAI admin</a></h1>
  <form method="get" action="/admin" class="filters">
    <label>Number <input name="number" value="${escapeHtml(input.filters.number ?? '')}" placeholder="+15550100001"></label>
    <label>Show <input name="limit" type="number" min="1" max="500" value="${input.filters.limit}"></label>
    <button type="submit">Filter</button>
  </form>
</header>
<main>
<section id="calls">
  <h2>Recent calls</h2>
  ${callsTable(input.calls, selected?.callSid)}
</section>
${input.missing ? `<p class="note" id="missing">No call ${escapeHtml(input.missing)} in the store.</p>` : ''}
${selected ? callSummary(selected) : ''}
<section id="machine">
  <h2>${selected ? 'The path through the call machine' : 'The call machine'}</h2>
  ${selected ? `<p class="legend"><span class="swatch"></span> states and edges this call went through (${visitedStates.size} of ${graph.states.length} states, ${visitedEdges.size} of ${graph.edges.length} edges)</p>` : ''}
  <div id="diagram" class="diagram">${diagram}</div>
</section>
${selected ? timelineTable(timeline) : ''}
</main>
<footer>Rendered ${escapeHtml(new Date(input.now).toISOString())} from the call store.</footer>
</body>
</html>
`;
}

function callsTable(calls: CallSummary[], selected: string | undefined): string {
  if (calls.length === 0) return '<p class="note">No calls yet.</p>';
  const rows = calls
    .map(
      (c) => `<tr${c.callSid === selected ? ' class="selected"' : ''}>
    <td><a href="/admin?call=${encodeURIComponent(c.callSid)}">${escapeHtml(c.callSid)}</a></td>
    <td>${escapeHtml(new Date(c.startedAt).toISOString())}</td>
    <td>${escapeHtml(c.from)}</td><td>${escapeHtml(c.to)}</td>
    <td>${escapeHtml(c.state)}</td><td>${escapeHtml(c.endReason ?? '')}</td><td>${c.turnCount}</td>
  </tr>`,
    )
    .join('\n  ');
  return `<table class="calls">
  <thead><tr><th>Call</th><th>Started (UTC)</th><th>From</th><th>To</th><th>State</th><th>End reason</th><th>Turns</th></tr></thead>
  <tbody>
  ${rows}
  </tbody>
</table>`;
}

function callSummary(record: CallRecord): string {
  const fields: Array<[string, string | undefined]> = [
    ['From', record.from],
    ['To', record.to],
    ['Started', new Date(record.startedAt).toISOString()],
    ['Status', record.status],
    ['State', record.state],
    ['End reason', record.endReason],
    ['Duration', record.durationSec === undefined ? undefined : `${record.durationSec} s`],
    ['Last error', record.lastError],
  ];
  const items = fields
    .filter((f): f is [string, string] => f[1] !== undefined)
    .map(([name, value]) => `<dt>${name}</dt><dd>${escapeHtml(value)}</dd>`)
    .join('');
  return `<section id="call" data-call="${escapeHtml(record.callSid)}">
  <h2>Call ${escapeHtml(record.callSid)}</h2>
  <dl class="summary">${items}</dl>
</section>`;
}

function timelineTable(rows: TimelineRow[]): string {
  const body = rows
    .map(
      (r) => `<tr data-state="${escapeHtml(r.state)}">
    <td>${r.step}</td><td><time datetime="${new Date(r.at).toISOString()}">${escapeHtml(new Date(r.at).toISOString().slice(11, 23))}</time> <span class="offset">+${r.sinceStartSec.toFixed(1)} s</span></td>
    <td class="state">${escapeHtml(r.state)}</td><td class="via">${escapeHtml(r.via)}</td><td class="said">${escapeHtml(r.said)}</td>
  </tr>`,
    )
    .join('\n  ');
  return `<section id="path">
<h2>Timeline</h2>
<table id="timeline">
  <thead><tr><th>#</th><th>Time (UTC)</th><th>State</th><th>Via</th><th>What was said</th></tr></thead>
  <tbody>
  ${body}
  </tbody>
</table>
</section>`;
}

/**
 * Text as HTML. Bidirectional controls are shown as what they are (`⟨U+202E⟩`)
 * instead of reordering the text around them: caller words are stripped of them at
 * the edge (src/twilio/spoken-text.ts), but an agent's reply or an older record may
 * still carry one, and the console must not display a line backwards.
 */
export function escapeHtml(text: string): string {
  return text
    .replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)
    .replace(/[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, (c) => `⟨U+${c.charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')}⟩`);
}

/** The colour of a visited state; the browser test looks for it in a screenshot. */
export const HIGHLIGHT_FILL = '#ff8c00';

const STYLE = `
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1f2328; background: #fff; }
header { display: flex; gap: 2rem; align-items: center; padding: .5rem 1.5rem; border-bottom: 1px solid #d0d7de; }
header h1 { font-size: 1.2rem; margin: 0; } header h1 a { color: inherit; text-decoration: none; }
main { padding: 0 1.5rem 2rem; } footer { padding: 1rem 1.5rem; color: #656d76; font-size: 12px; }
h2 { font-size: 1.05rem; margin: 1.2rem 0 .5rem; }
table { border-collapse: collapse; } th, td { text-align: left; padding: .25rem .6rem; border-bottom: 1px solid #eaeef2; vertical-align: top; }
td, dd { overflow-wrap: anywhere; } /* a 1,800-character "word" wraps instead of widening the page */
th { background: #f6f8fa; } tr.selected td { background: #fff4e5; }
.calls { font-size: 13px; } .note { color: #656d76; }
.summary { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; margin: 0; } .summary dt { color: #656d76; } .summary dd { margin: 0; }
.diagram { border: 1px solid #d0d7de; border-radius: 6px; overflow: auto; max-height: 80vh; padding: .5rem; }
.diagram svg { min-width: 900px; height: auto; }
.legend .swatch { display: inline-block; width: 1em; height: 1em; vertical-align: middle; border: 2px solid #b35900; background: #ffd8a8; }
#timeline .offset { color: #656d76; font-size: 12px; } #timeline .said { max-width: 40rem; }
.diagram g.node.visited rect, .diagram g.node.visited path, .diagram g.node.visited circle { fill: ${HIGHLIGHT_FILL} !important; stroke: #b35900 !important; stroke-width: 3px !important; }
.diagram path.visited { stroke: #e8590c !important; stroke-width: 4px !important; }
.diagram g.visited .labelBkg, .diagram g.visited span.edgeLabel { background: #ffd8a8 !important; }
`;
