/**
 * The service's own time per webhook: the webhook's total time (as Twilio sees
 * it, request sent to answer read) minus the time the service spent waiting on
 * the fakes for that webhook, taken from the fakes' own request log.
 *
 * What a webhook waited for depends on what it answered:
 * - answer audio (`/audio/call/<CallSid>/t<turn>[p<piece>]`): the agent, from its
 *   request arriving to the last chunk it wrote before ElevenLabs was asked for the
 *   last piece played, and ElevenLabs for every piece up to that one (request
 *   arriving to response finished);
 * - a hold (`<Redirect>` and no answer audio): everything of this call's turn that
 *   was under way, since the webhook was waiting on it until its deadline;
 * - anything else (greeting, re-prompt, goodbye, status callback, a continuation
 *   whose audio was ready): nothing.
 * The waits are merged as intervals and clipped to the webhook, so two pieces
 * synthesised in parallel count once.
 */
import type { FakeRequestLog } from './fakes-process.ts';
import type { WebhookTiming } from './calls.ts';
import { orderIn } from './scenario.ts';

export interface WebhookOverhead {
  path: string;
  kind: 'answer' | 'hold' | 'plain';
  totalMs: number;
  waitMs: number;
  overheadMs: number;
  /** For answers: before the agent was asked, between the agent's text and ElevenLabs, after the audio. */
  stages?: { beforeAgentMs: number; agentToSpeechMs: number; afterSpeechMs: number };
}

export interface OverheadResult {
  webhooks: WebhookOverhead[];
  /** Webhooks whose waits could not be matched to the fakes' log (left out of the figures). */
  unmatched: number;
}

interface CallLog {
  /** The agent request of each turn, in order. */
  agent: FakeRequestLog[];
  /** The ElevenLabs requests of each turn, in order (piece 0, 1, ...). */
  tts: FakeRequestLog[][];
}

const ANSWER_AUDIO = /\/audio\/call\/CA[0-9a-f]{32}\/t(\d+)(?:p(\d+))?/g;

export function measureOverhead(webhooks: WebhookTiming[], fakes: FakeRequestLog[], orderOfCall: Map<string, number>): OverheadResult {
  const logs = indexByCall(fakes, orderOfCall);
  const result: OverheadResult = { webhooks: [], unmatched: 0 };
  for (const webhook of webhooks) {
    const totalMs = webhook.endedAt - webhook.startedAt;
    const log = logs.get(webhook.callSid);
    const pieces = [...webhook.body.matchAll(ANSWER_AUDIO)].map((m) => ({ turn: Number(m[1]), piece: Number(m[2] ?? 0) }));
    let kind: WebhookOverhead['kind'] = 'plain';
    let waits: Array<[number, number]> = [];
    let stages: WebhookOverhead['stages'];
    if (pieces.length > 0) {
      kind = 'answer';
      const turn = pieces[0]!.turn;
      const last = Math.max(...pieces.map((p) => p.piece));
      const agent = log?.agent[turn];
      const tts = log?.tts[turn] ?? [];
      if (!agent || tts.length <= last) {
        result.unmatched++;
        continue;
      }
      const asked = tts[last]!.arrivedAt;
      const lastChunk = agent.chunks.filter((c) => c.at <= asked).at(-1)?.at ?? agent.arrivedAt;
      waits = [[agent.arrivedAt, lastChunk], ...tts.slice(0, last + 1).map((r): [number, number] => [r.arrivedAt, r.endedAt ?? Infinity])];
      stages = {
        beforeAgentMs: Math.max(0, agent.arrivedAt - webhook.startedAt),
        agentToSpeechMs: Math.max(0, asked - lastChunk),
        afterSpeechMs: Math.max(0, webhook.endedAt - Math.max(...tts.slice(0, last + 1).map((r) => r.endedAt ?? webhook.endedAt))),
      };
    } else if (webhook.body.includes('<Redirect')) {
      kind = 'hold';
      const turn = (log?.agent ?? []).filter((a) => a.arrivedAt <= webhook.endedAt).length - 1;
      if (log && turn >= 0) {
        waits = [log.agent[turn]!, ...(log.tts[turn] ?? [])].map((r): [number, number] => [r.arrivedAt, r.endedAt ?? Infinity]);
      }
    }
    const waitMs = coveredMs(waits, webhook.startedAt, webhook.endedAt);
    result.webhooks.push({ path: webhook.path, kind, totalMs, waitMs, overheadMs: totalMs - waitMs, ...(stages ? { stages } : {}) });
  }
  return result;
}

function indexByCall(fakes: FakeRequestLog[], orderOfCall: Map<string, number>): Map<string, CallLog> {
  const callOfOrder = new Map([...orderOfCall].map(([callSid, order]) => [order, callSid]));
  const logs = new Map<string, CallLog>();
  const logOf = (callSid: string) => {
    let log = logs.get(callSid);
    if (!log) logs.set(callSid, (log = { agent: [], tts: [] }));
    return log;
  };
  const sorted = [...fakes].sort((a, b) => a.arrivedAt - b.arrivedAt);
  for (const request of sorted) {
    if (request.kind === 'agent' && request.callSid) logOf(request.callSid).agent.push(request);
  }
  for (const request of sorted) {
    if (request.kind !== 'tts') continue;
    const order = orderIn(request.text) ?? orderIn(request.previousText);
    const callSid = order === undefined ? undefined : callOfOrder.get(order);
    if (!callSid) continue; // a fixed phrase
    const log = logOf(callSid);
    const turn = log.agent.filter((a) => a.arrivedAt <= request.arrivedAt).length - 1;
    if (turn < 0) continue;
    (log.tts[turn] ??= []).push(request);
  }
  return logs;
}

/** How much of [from, to] the intervals cover together. */
function coveredMs(intervals: Array<[number, number]>, from: number, to: number): number {
  const clipped = intervals
    .map(([a, b]): [number, number] => [Math.max(a, from), Math.min(b, to)])
    .filter(([a, b]) => b > a)
    .sort((x, y) => x[0] - y[0]);
  let covered = 0;
  let end = -Infinity;
  for (const [a, b] of clipped) {
    if (b <= end) continue;
    covered += b - Math.max(a, end);
    end = b;
  }
  return covered;
}
