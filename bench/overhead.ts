/**
 * The service's own time per webhook: the webhook's time in the service minus the
 * time the service spent waiting on the fakes for that webhook.
 *
 * Three processes share the machine's two cores, and each is charged only for its
 * own side of every exchange: a process's time runs from the moment a request is
 * fully written to its socket to the moment it hands the last byte of its answer
 * to the kernel. So, per webhook:
 *
 * - its window runs from the benchmark's caller having written the request (the
 *   caller's `undici:request:bodySent`) to the service having written the answer
 *   (the service's `http.server.response.finish`, reported by
 *   bench/service-probe.ts). Before that the time is the caller's (its loop was
 *   busy, it had not sent yet), after it the caller's again (reading the answer).
 *   The service's own lateness in reading the request is in the window.
 * - a wait on a fake runs from the service having written its whole request to
 *   the fake (when node:http wrote it, headers and body together: bench/service-probe.ts;
 *   matched to the fake's log by the connection's port and the last request written
 *   on it before the fake saw one) to
 *   the fake having written its last byte. A fake slow to read the request is the
 *   fake's time; the service slow to read the answer is the service's.
 * - the full collections the benchmark forces in the service to measure memory
 *   are the benchmark's: they count as waits too.
 *
 * What a webhook waited for depends on what it answered:
 * - answer audio (`/audio/call/<CallSid>/t<turn>[p<piece>]`): the agent, from its
 *   request to the last chunk it wrote before ElevenLabs was asked for the last
 *   piece played, and ElevenLabs for every piece up to that one;
 * - a hold (`<Redirect>` and no answer audio): everything of this call's turn that
 *   was under way, since the webhook was waiting on it until its deadline;
 * - anything else (greeting, re-prompt, goodbye, status callback, a continuation
 *   whose audio was ready): nothing.
 * The waits are merged as intervals and clipped to the webhook, so two pieces
 * synthesised in parallel count once.
 *
 * Also per webhook: how much of its own time the service spent stopped for garbage
 * collection, how much of the rest its main thread spent ready to run but waiting
 * for a CPU (schedstat, sampled: the CPU was held by another process or by the
 * service's own GC and compiler threads), and
 * the figure by the former method, which took the window and the waits on the
 * benchmark's and the fakes' clocks (request sent to answer read; request arrived
 * at the fake to response finished) and so charged the service for the other two
 * processes' stalls.
 */
import type { FakeRequestLog } from './fakes-process.ts';
import type { WebhookTiming } from './calls.ts';
import { orderIn } from './scenario.ts';
import type { TimingsReply } from './service-probe.ts';

export interface WebhookOverhead {
  path: string;
  kind: 'answer' | 'hold' | 'plain';
  /** As the caller saw it: request sent to answer read. */
  totalMs: number;
  waitMs: number;
  /** The service's own time. */
  overheadMs: number;
  /** Of the own time outside GC pauses, how long the service's main thread waited for a CPU (another process's or its own threads'). */
  cpuWaitMs: number;
  /** Of the own time, how long the service was stopped for garbage collection. */
  gcMs: number;
  /** The former method: caller's and fakes' clocks. */
  formerMs: number;
  /** The webhook in the service (monotonic clock, ms), to look it up in a profile of the service. */
  window: [number, number];
  /** For answers: before the agent was asked, between the agent's text and ElevenLabs, after the audio. */
  stages?: { beforeAgentMs: number; agentToSpeechMs: number; afterSpeechMs: number };
}

export interface OverheadResult {
  webhooks: WebhookOverhead[];
  /** Webhooks whose waits could not be matched to the fakes' log (left out of the figures). */
  unmatched: number;
  /** Webhooks or fake requests timed on the other process's clock because the service's log missed them. */
  unmatchedInService: number;
}

interface CallLog {
  /** The agent request of each turn, in order. */
  agent: FakeRequestLog[];
  /** The ElevenLabs requests of each turn, in order (piece 0, 1, ...). */
  tts: FakeRequestLog[][];
}

type Interval = [number, number];

const ANSWER_AUDIO = /\/audio\/call\/CA[0-9a-f]{32}\/t(\d+)(?:p(\d+))?/g;

export function measureOverhead(
  webhooks: WebhookTiming[],
  fakes: FakeRequestLog[],
  orderOfCall: Map<string, number>,
  service: TimingsReply,
): OverheadResult {
  const logs = indexByCall(fakes, orderOfCall);
  const served = new Map(service.webhooks.map((w) => [w.token, w]));
  const sentBy = sentByPort(service.requests);
  const cpuWaited = cumulative(service.cpuWait);
  const result: OverheadResult = { webhooks: [], unmatched: 0, unmatchedInService: 0 };
  /** When the service had written its request to the fake (the fake's arrival if the service's log missed it). */
  const sentToFake = (request: FakeRequestLog): number => {
    const sent = request.remotePort === undefined ? undefined : sentBefore(sentBy.get(request.remotePort), request.arrivedAt);
    if (sent === undefined) result.unmatchedInService++;
    return sent ?? request.arrivedAt;
  };
  for (const webhook of webhooks) {
    const totalMs = webhook.endedAt - webhook.startedAt;
    const finishedAt = served.get(webhook.token)?.finishedAt;
    if (finishedAt === undefined || webhook.sentAt === undefined) result.unmatchedInService++;
    const from = webhook.sentAt ?? webhook.startedAt;
    const to = finishedAt ?? webhook.endedAt;
    const log = logs.get(webhook.callSid);
    const pieces = [...webhook.body.matchAll(ANSWER_AUDIO)].map((m) => ({ turn: Number(m[1]), piece: Number(m[2] ?? 0) }));
    let kind: WebhookOverhead['kind'] = 'plain';
    let waits: Array<{ sent: number; arrived: number; ended: number }> = [];
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
      const played = tts.slice(0, last + 1);
      const asked = sentToFake(tts[last]!);
      const lastChunk = agent.chunks.filter((c) => c.at <= asked).at(-1)?.at ?? agent.arrivedAt;
      // The former method cut the agent at the last chunk before ElevenLabs saw the request.
      const lastChunkFormer = agent.chunks.filter((c) => c.at <= tts[last]!.arrivedAt).at(-1)?.at ?? agent.arrivedAt;
      waits = [
        { sent: sentToFake(agent), arrived: agent.arrivedAt, ended: lastChunk },
        ...played.map((r) => ({ sent: sentToFake(r), arrived: r.arrivedAt, ended: r.endedAt ?? Infinity })),
      ];
      const formerWaits: Interval[] = [[agent.arrivedAt, lastChunkFormer], ...played.map((r): Interval => [r.arrivedAt, r.endedAt ?? Infinity])];
      stages = {
        beforeAgentMs: Math.max(0, waits[0]!.sent - from),
        agentToSpeechMs: Math.max(0, asked - lastChunk),
        afterSpeechMs: Math.max(0, to - Math.max(...played.map((r) => r.endedAt ?? to))),
      };
      result.webhooks.push(figures(webhook, kind, [from, to], waits, formerWaits, service, cpuWaited, stages));
      continue;
    }
    if (webhook.body.includes('<Redirect')) {
      kind = 'hold';
      const turn = (log?.agent ?? []).filter((a) => a.arrivedAt <= webhook.endedAt).length - 1;
      if (log && turn >= 0) {
        waits = [log.agent[turn]!, ...(log.tts[turn] ?? [])].map((r) => ({ sent: sentToFake(r), arrived: r.arrivedAt, ended: r.endedAt ?? Infinity }));
      }
    }
    const formerWaits = waits.map((w): Interval => [w.arrived, w.ended]);
    result.webhooks.push(figures(webhook, kind, [from, to], waits, formerWaits, service, cpuWaited, stages));
  }
  return result;
}

function figures(
  webhook: WebhookTiming,
  kind: WebhookOverhead['kind'],
  window: Interval,
  waits: Array<{ sent: number; ended: number }>,
  formerWaits: Interval[],
  service: Pick<TimingsReply, 'forcedGc' | 'gcPauses'>,
  cpuWaited: (at: number) => number,
  stages: WebhookOverhead['stages'],
): WebhookOverhead {
  const [from, to] = window;
  const outside = merged([...waits.map((w): Interval => [w.sent, w.ended]), ...service.forcedGc], from, to);
  const waitMs = outside.reduce((sum, [a, b]) => sum + b - a, 0);
  const own = gaps(outside, from, to);
  const gcMs = own.reduce((sum, [a, b]) => sum + merged(service.gcPauses, a, b).reduce((n, [x, y]) => n + y - x, 0), 0);
  // CPU waits outside the GC pauses, so that the two never count the same moment.
  const running = gaps(merged([...outside, ...service.gcPauses], from, to), from, to);
  const cpuWaitMs = running.reduce((sum, [a, b]) => sum + Math.max(0, cpuWaited(b) - cpuWaited(a)), 0);
  const formerCovered = merged(formerWaits, webhook.startedAt, webhook.endedAt).reduce((sum, [a, b]) => sum + b - a, 0);
  return {
    path: webhook.path,
    kind,
    totalMs: webhook.endedAt - webhook.startedAt,
    waitMs,
    overheadMs: Math.max(0, to - from - waitMs),
    cpuWaitMs,
    gcMs,
    formerMs: webhook.endedAt - webhook.startedAt - formerCovered,
    window,
    ...(stages ? { stages } : {}),
  };
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

/** The service's requests by its local port, in the order they were written (one at a time per connection). */
function sentByPort(requests: TimingsReply['requests']): Map<number, TimingsReply['requests']> {
  const byPort = new Map<number, TimingsReply['requests']>();
  for (const request of requests) {
    let list = byPort.get(request.localPort);
    if (!list) byPort.set(request.localPort, (list = []));
    list.push(request);
  }
  for (const list of byPort.values()) list.sort((a, b) => a.writtenAt - b.writtenAt);
  return byPort;
}

/** When the service wrote the request on that connection that was the last written before the fake saw a request. */
function sentBefore(sorted: TimingsReply['requests'] | undefined, arrivedAt: number): number | undefined {
  if (!sorted) return undefined;
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid]!.writtenAt <= arrivedAt) lo = mid + 1;
    else hi = mid;
  }
  return lo > 0 ? sorted[lo - 1]!.writtenAt : undefined;
}

/** A sampled cumulative counter as a function of time, linear between samples. */
function cumulative(samples: Array<[number, number]>): (at: number) => number {
  return (at) => {
    if (samples.length === 0) return 0;
    let lo = 0;
    let hi = samples.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (samples[mid]![0] <= at) lo = mid + 1;
      else hi = mid;
    }
    if (lo === 0) return samples[0]![1];
    if (lo === samples.length) return samples[lo - 1]![1];
    const [t0, v0] = samples[lo - 1]!;
    const [t1, v1] = samples[lo]!;
    return v0 + ((v1 - v0) * (at - t0)) / (t1 - t0);
  };
}

/** The intervals clipped to [from, to], sorted and merged. */
function merged(intervals: Interval[], from: number, to: number): Interval[] {
  const clipped = intervals
    .map(([a, b]): Interval => [Math.max(a, from), Math.min(b, to)])
    .filter(([a, b]) => b > a)
    .sort((x, y) => x[0] - y[0]);
  const out: Interval[] = [];
  for (const [a, b] of clipped) {
    const last = out.at(-1);
    if (last && a <= last[1]) last[1] = Math.max(last[1], b);
    else out.push([a, b]);
  }
  return out;
}

/** What of [from, to] the merged intervals leave uncovered. */
function gaps(covered: Interval[], from: number, to: number): Interval[] {
  const out: Interval[] = [];
  let at = from;
  for (const [a, b] of covered) {
    if (a > at) out.push([at, a]);
    at = Math.max(at, b);
  }
  if (to > at) out.push([at, to]);
  return out;
}
