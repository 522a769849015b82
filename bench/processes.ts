/**
 * The processes a benchmark run starts: the fakes (bench/fakes-process.ts) and the
 * service itself (`node src/server.ts`, exactly what `npm start` runs), each on
 * its own, plus what Linux tells about them (resident memory, CPU time) from /proc.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from '../tools/free-port.ts';
import type { FakeRequestLog, FakesLatency, FakesMessage, FakesReply } from './fakes-process.ts';
import type { ProbeReply, TimingsReply } from './service-probe.ts';

const FAKES = fileURLToPath(new URL('./fakes-process.ts', import.meta.url));
const SERVER = fileURLToPath(new URL('../src/server.ts', import.meta.url));
const PROBE = fileURLToPath(new URL('./service-probe.ts', import.meta.url));

export const PUBLIC_BASE_URL = 'https://voice.example.test';
export const AUTH_TOKEN = 'bench-twilio-auth-token-0123456789';

/** Milliseconds on CLOCK_MONOTONIC, shared by every process on the machine. */
export const clock = (): number => Number(process.hrtime.bigint()) / 1e6;

export interface Fakes {
  agentUrl: string;
  elevenLabsUrl: string;
  pid: number;
  configure(latency: FakesLatency): void;
  /** The fakes' request log since the last drain, and how late their event loop ran meanwhile. */
  drain(): Promise<{ requests: FakeRequestLog[]; loopDelayMs: { p99: number; max: number } }>;
  close(): Promise<void>;
}

export async function startFakes(latency: FakesLatency): Promise<Fakes> {
  const child = spawn(process.execPath, [FAKES, JSON.stringify(latency)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const ready = await new Promise<Extract<FakesReply, { type: 'ready' }>>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`the fakes process exited (${code}) before it was ready`)));
    child.once('message', (message: FakesReply) => {
      if (message.type === 'ready') resolve(message);
    });
  });
  child.removeAllListeners('exit');
  const send = (message: FakesMessage) => child.send(message);
  return {
    agentUrl: ready.agentUrl,
    elevenLabsUrl: ready.elevenLabsUrl,
    pid: child.pid!,
    configure: (next) => send({ type: 'configure', latency: next }),
    drain: () =>
      new Promise((resolve) => {
        const onMessage = (message: FakesReply) => {
          if (message.type !== 'log') return;
          child.off('message', onMessage);
          resolve({ requests: message.requests, loopDelayMs: message.loopDelayMs });
        };
        child.on('message', onMessage);
        send({ type: 'drain' });
      }),
    close: () => stop(child),
  };
}

export interface ServiceProcess {
  url: string;
  pid: number;
  /** From spawn to the first `/healthz` 200. */
  readyMs: number;
  /** Its DATA_DIR (the embedded store), removed by `close()`. */
  dataDir: string;
  output: string[];
  /** Heap (optionally after a full GC), event-loop delay and GC pauses, when started with `probe`. */
  probe(options: { gc: boolean; reset: boolean }): Promise<ProbeReply>;
  /** The service's own timings since the last call (webhooks, its requests to the fakes, CPU waits), with `probe`. */
  timings(): Promise<TimingsReply>;
  close(): Promise<void>;
}

/**
 * Starts `node src/server.ts` with a fresh DATA_DIR and waits for `/healthz`,
 * polling every `pollMs`. The environment is only what is passed plus PATH: no
 * settings leak in from the shell running the benchmark. With `probe`, the
 * process also loads bench/service-probe.ts (cold-start runs do not);
 * `nodeOptions` go to node before everything else (`--cpu-prof`, `--trace-gc`);
 * `cpus` confines the service to those CPUs (`taskset -c`, Linux); `entry` starts
 * another entry point than src/server.ts (the production build, for cold start).
 */
export async function startService(
  env: Record<string, string>,
  options: { pollMs?: number; probe?: boolean; nodeOptions?: string[]; cpus?: string; entry?: string } = {},
): Promise<ServiceProcess> {
  const dataDir = mkdtempSync(join(tmpdir(), 'heyai-bench-'));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const startedAt = clock();
  const args = [...(options.nodeOptions ?? []), ...(options.probe ? ['--expose-gc', '--import', PROBE] : []), options.entry ?? SERVER];
  // taskset execs node in its own process: the pid is the service's.
  const [command, commandArgs] = options.cpus ? ['taskset', ['-c', options.cpus, process.execPath, ...args]] : [process.execPath, args];
  const child = spawn(command, commandArgs, {
    env: {
      PATH: process.env.PATH ?? '',
      HOST: '127.0.0.1',
      PORT: String(port),
      PUBLIC_BASE_URL,
      TWILIO_AUTH_TOKEN: AUTH_TOKEN,
      DATA_DIR: dataDir,
      LOG_LEVEL: 'warn',
      ...env,
    },
    stdio: options.probe ? ['ignore', 'pipe', 'pipe', 'ipc'] : ['ignore', 'pipe', 'pipe'],
  });
  const output: string[] = [];
  const keep = (data: Buffer) => {
    for (const line of data.toString('utf8').split('\n')) if (line && output.length < 200) output.push(line);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const deadline = startedAt + 15_000;
  for (;;) {
    try {
      const response = await fetch(`${url}/healthz`);
      await response.arrayBuffer();
      if (response.ok) break;
    } catch {
      // not listening yet
    }
    if (child.exitCode !== null) throw new Error(`the service exited early:\n${output.join('\n')}`);
    if (clock() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`the service was not ready within 15 s:\n${output.join('\n')}`);
    }
    await new Promise((resolve) => setTimeout(resolve, options.pollMs ?? 5));
  }
  const readyMs = clock() - startedAt;
  return {
    url,
    pid: child.pid!,
    readyMs,
    dataDir,
    output,
    probe: ({ gc, reset }) => ask<ProbeReply>(child, { type: 'probe', gc, reset }),
    timings: () => ask<TimingsReply>(child, { type: 'timings' }),
    async close() {
      await stop(child);
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** One question to bench/service-probe.ts and its answer (of the same type). */
function ask<T extends { type: string }>(child: ChildProcess, message: { type: T['type'] } & Record<string, unknown>): Promise<T> {
  return new Promise((resolve, reject) => {
    if (!child.connected) return reject(new Error('the service was not started with the probe'));
    const onMessage = (reply: { type?: string }) => {
      if (reply.type !== message.type) return;
      child.off('message', onMessage);
      resolve(reply as T);
    };
    child.on('message', onMessage);
    child.send(message);
  });
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

/** Resident memory of a process, bytes (VmRSS). */
export function residentBytes(pid: number): number {
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match ? Number(match[1]) * 1024 : 0;
}

/** User + system CPU time a process has used, ms (clock ticks are 10 ms on Linux). */
export function cpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name, which is in parentheses and may hold spaces.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/** CPU time of this process (user + system), ms. */
export function ownCpuMs(): number {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1000;
}

/** CPU time of the whole machine, ms summed over cores: busy, and busy + idle (/proc/stat, 10 ms ticks). */
export function machineCpu(): { busyMs: number; totalMs: number } {
  const ticks = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
  const idle = ticks[3]! + ticks[4]!;
  const total = ticks.reduce((a, b) => a + b, 0);
  return { busyMs: (total - idle) * 10, totalMs: total * 10 };
}
