/**
 * Loaded into the service process by the benchmark (`node --expose-gc --import
 * bench/service-probe.ts src/server.ts`), never in production: answers the
 * benchmark's questions over the IPC channel about what only the process itself
 * knows: its heap after a full garbage collection, how late its event loop ran
 * (the service's own stalls, as opposed to the benchmark's), and when each
 * webhook arrived and its answer was handed to the socket, from Node's HTTP
 * diagnostics channels (the service's code is not touched).
 *
 *   parent → { type: 'probe', gc: boolean, reset: boolean }
 *   child  → { type: 'probe', heapUsed, rss, arrayBuffers, loopDelayMs: { p50, p99, max }, webhooks }
 *
 * @see https://nodejs.org/api/diagnostics_channel.html#http
 */
import { subscribe } from 'node:diagnostics_channel';
import type { IncomingMessage } from 'node:http';
import { monitorEventLoopDelay } from 'node:perf_hooks';

/** A webhook as the service saw it: request headers parsed to response finished, on CLOCK_MONOTONIC. */
export interface ServedWebhook {
  path: string;
  callSid: string | undefined;
  arrivedAt: number;
  finishedAt: number;
}

export interface ProbeReply {
  type: 'probe';
  heapUsed: number;
  rss: number;
  arrayBuffers: number;
  loopDelayMs: { p50: number; p99: number; max: number };
  /** Webhooks served since the last probe. */
  webhooks: ServedWebhook[];
}

const clock = (): number => Number(process.hrtime.bigint()) / 1e6;
const served: ServedWebhook[] = [];
const open = new WeakMap<IncomingMessage, { path: string; arrivedAt: number; body: Buffer[] }>();

subscribe('http.server.request.start', (message) => {
  const { request } = message as { request: IncomingMessage };
  if (request.method !== 'POST') return;
  const state = { path: (request.url ?? '').split('?')[0]!, arrivedAt: clock(), body: [] as Buffer[] };
  open.set(request, state);
  // Tee the form body as the parser pushes it, for the CallSid; the service reads the stream as usual.
  const push = request.push.bind(request);
  request.push = (chunk: unknown, encoding?: BufferEncoding) => {
    if (chunk !== null && chunk !== undefined) state.body.push(Buffer.from(chunk as Buffer));
    return push(chunk, encoding);
  };
});

subscribe('http.server.response.finish', (message) => {
  const { request } = message as { request: IncomingMessage };
  const state = open.get(request);
  if (!state) return;
  const callSid = new URLSearchParams(Buffer.concat(state.body).toString('utf8')).get('CallSid') ?? undefined;
  served.push({ path: state.path, callSid, arrivedAt: state.arrivedAt, finishedAt: clock() });
});

const RESOLUTION_MS = 5;
const delay = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
delay.enable();
const late = (ns: number): number => Math.max(0, ns / 1e6 - RESOLUTION_MS);

process.on('message', (message: { type?: string; gc?: boolean; reset?: boolean }) => {
  if (message.type !== 'probe') return;
  if (message.gc) (globalThis as { gc?: () => void }).gc?.();
  const memory = process.memoryUsage();
  const reply: ProbeReply = {
    type: 'probe',
    heapUsed: memory.heapUsed,
    rss: memory.rss,
    arrayBuffers: memory.arrayBuffers,
    // The histogram holds the time between checks: the resolution plus how late the loop ran.
    loopDelayMs: { p50: late(delay.percentile(50)), p99: late(delay.percentile(99)), max: late(delay.max) },
    webhooks: served.splice(0),
  };
  if (message.reset) delay.reset();
  process.send?.(reply);
});
// The channel must not keep the service alive once it shuts down.
process.channel?.unref();
