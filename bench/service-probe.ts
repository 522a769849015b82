/**
 * Loaded into the service process by the benchmark (`node --expose-gc --import
 * bench/service-probe.ts src/server.ts`), never in production: answers the
 * benchmark's questions over the IPC channel about what only the process itself
 * knows:
 *
 * - its heap after a full garbage collection;
 * - how late its event loop ran (the service's own stalls, as opposed to the
 *   benchmark's), and its garbage-collection pauses; the full collections the
 *   benchmark forces to measure memory are left out of both, and their times
 *   reported, so that the benchmark does not charge them to the service;
 * - when each webhook reached it and when it handed the last byte of its answer
 *   to the kernel, and when it had written each of its own requests to the fakes
 *   (headers, then the whole body) with the connection's local port, which the
 *   fakes see as the remote one, so the benchmark charges the service only for
 *   its own side of every exchange;
 * - how long its main thread was ready to run but waited for a CPU that other
 *   processes had (Linux's schedstat), sampled every SCHED_SAMPLE_MS.
 *
 * Everything comes from Node's diagnostics channels and perf hooks: the service's
 * code is unchanged.
 *
 *   parent → { type: 'probe', gc: boolean, reset: boolean }
 *   child  → { type: 'probe', heapUsed, rss, arrayBuffers, loopDelayMs, gc }
 *   parent → { type: 'timings' }        (and forget them)
 *   child  → { type: 'timings', webhooks, requests, cpuWait, forcedGc, gcPauses }
 *
 * @see https://nodejs.org/api/diagnostics_channel.html#built-in-channels
 * @see https://docs.kernel.org/scheduler/sched-stats.html
 */
import { subscribe } from 'node:diagnostics_channel';
import { readFileSync } from 'node:fs';
import type { ClientRequest, IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { constants, monitorEventLoopDelay, PerformanceObserver, type PerformanceEntry } from 'node:perf_hooks';

export interface GcPauses {
  count: number;
  totalMs: number;
  maxMs: number;
  /** Pauses of 5 ms or more. */
  over5Ms: number;
}

export interface ProbeReply {
  type: 'probe';
  heapUsed: number;
  rss: number;
  arrayBuffers: number;
  loopDelayMs: { p50: number; p99: number; max: number };
  gc: GcPauses;
}

/** A webhook as the service saw it, keyed by Twilio's idempotency token (unique per request). */
export interface ServedWebhook {
  token: string;
  arrivedAt: number;
  /** The last byte of the answer handed to the kernel. */
  finishedAt?: number;
}

/** One of the service's own requests (to the agent or ElevenLabs). */
export interface SentRequest {
  localPort: number;
  /** Headers and body written to the socket, together (the fake may start reading from here). */
  writtenAt: number;
}

export interface TimingsReply {
  type: 'timings';
  webhooks: ServedWebhook[];
  requests: SentRequest[];
  /** Cumulative time the main thread waited for a CPU, ms, sampled: [clock, waited]. */
  cpuWait: Array<[number, number]>;
  /** The full collections the benchmark forced to measure memory, [start, end]: its stalls, not the service's. */
  forcedGc: Array<[number, number]>;
  /** The service's own garbage-collection pauses, [start, end]. */
  gcPauses: Array<[number, number]>;
}

const RESOLUTION_MS = 5;
const SCHED_SAMPLE_MS = 10;
const clock = (): number => Number(process.hrtime.bigint()) / 1e6;
const delay = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
delay.enable();
const late = (ns: number): number => Math.max(0, ns / 1e6 - RESOLUTION_MS);

/** performance.now() → the shared monotonic clock. */
const performanceToClock = clock() - performance.now();
let gc: GcPauses = { count: 0, totalMs: 0, maxMs: 0, over5Ms: 0 };
let gcPauses: Array<[number, number]> = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries() as Array<PerformanceEntry & { detail?: { flags?: number } }>) {
    if ((entry.detail?.flags ?? 0) & constants.NODE_PERFORMANCE_GC_FLAGS_FORCED) continue;
    const start = entry.startTime + performanceToClock;
    gcPauses.push([start, start + entry.duration]);
    gc.count += 1;
    gc.totalMs += entry.duration;
    gc.maxMs = Math.max(gc.maxMs, entry.duration);
    if (entry.duration >= 5) gc.over5Ms += 1;
  }
}).observe({ entryTypes: ['gc'] });

let webhooks: ServedWebhook[] = [];
let requests: SentRequest[] = [];
let cpuWait: Array<[number, number]> = [];
let forcedGc: Array<[number, number]> = [];
const served = new WeakMap<IncomingMessage, ServedWebhook>();

subscribe('http.server.request.start', (message) => {
  const { request } = message as { request: IncomingMessage };
  const token = request.headers['i-twilio-idempotency-token'];
  if (typeof token !== 'string') return;
  const webhook: ServedWebhook = { token, arrivedAt: clock() };
  served.set(request, webhook);
  webhooks.push(webhook);
});
subscribe('http.server.response.finish', (message) => {
  const { request } = message as { request: IncomingMessage; response: ServerResponse };
  const webhook = served.get(request);
  if (webhook) webhook.finishedAt = clock();
});
// The agent and ElevenLabs clients use node:http (src/http-client/http-exchange.ts),
// which writes a request, headers and body together, right after handing it its
// socket (`socket`), or once a new connection is up. `finish` would be too late: it
// waits for the write's callback, by which time the fake may have read the request.
subscribe('http.client.request.created', (message) => {
  const { request } = message as { request: ClientRequest };
  request.once('socket', (socket: Socket) => {
    const stamp = (): void => {
      if (socket.localPort === undefined) return;
      requests.push({ localPort: socket.localPort, writtenAt: clock() });
    };
    if (socket.connecting) socket.once('connect', stamp);
    else stamp();
  });
});

const SCHEDSTAT = `/proc/self/task/${process.pid}/schedstat`;
const waitedMs = (): number | undefined => {
  try {
    return Number(readFileSync(SCHEDSTAT, 'utf8').split(' ')[1]) / 1e6;
  } catch {
    return undefined; // not Linux, or no schedstats
  }
};
if (waitedMs() !== undefined) {
  setInterval(() => cpuWait.push([clock(), waitedMs()!]), SCHED_SAMPLE_MS).unref();
}

process.on('message', (message: { type?: string; gc?: boolean; reset?: boolean }) => {
  if (message.type === 'timings') {
    const reply: TimingsReply = { type: 'timings', webhooks, requests, cpuWait, forcedGc, gcPauses };
    gcPauses = [];
    webhooks = [];
    requests = [];
    cpuWait = [];
    forcedGc = [];
    process.send?.(reply);
    return;
  }
  if (message.type !== 'probe') return;
  if (message.gc) {
    // The loop-delay histogram is paused over it: the benchmark's stall, not the service's.
    const started = clock();
    delay.disable();
    (globalThis as { gc?: () => void }).gc?.();
    delay.enable();
    forcedGc.push([started, clock()]);
  }
  const memory = process.memoryUsage();
  const reply: ProbeReply = {
    type: 'probe',
    heapUsed: memory.heapUsed,
    rss: memory.rss,
    arrayBuffers: memory.arrayBuffers,
    // The histogram holds the time between checks: the resolution plus how late the loop ran.
    loopDelayMs: { p50: late(delay.percentile(50)), p99: late(delay.percentile(99)), max: late(delay.max) },
    gc,
  };
  if (message.reset) {
    delay.reset();
    gc = { count: 0, totalMs: 0, maxMs: 0, over5Ms: 0 };
  }
  process.send?.(reply);
});
// The channel must not keep the service alive once it shuts down.
process.channel?.unref();
