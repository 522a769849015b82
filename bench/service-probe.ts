/**
 * Loaded into the service process by the benchmark (`node --expose-gc --import
 * bench/service-probe.ts src/server.ts`), never in production: answers the
 * benchmark's questions over the IPC channel about what only the process itself
 * knows: its heap after a full garbage collection, and how late its event loop
 * ran (the service's own stalls, as opposed to the benchmark's).
 *
 *   parent → { type: 'probe', gc: boolean, reset: boolean }
 *   child  → { type: 'probe', heapUsed, rss, arrayBuffers, loopDelayMs: { p50, p99, max } }
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';

export interface ProbeReply {
  type: 'probe';
  heapUsed: number;
  rss: number;
  arrayBuffers: number;
  loopDelayMs: { p50: number; p99: number; max: number };
}

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
  };
  if (message.reset) delay.reset();
  process.send?.(reply);
});
// The channel must not keep the service alive once it shuts down.
process.channel?.unref();
