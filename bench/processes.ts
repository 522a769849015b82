/**
 * The processes a benchmark run starts, each on its own so that the service's event
 * loop and CPU time are its own: the fakes (bench/fakes-process.ts) and the service
 * (bench/service-entry.ts; for cold start, src/server.ts or the production build),
 * and the CPU time Linux counts for a process.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from '../tools/free-port.ts';
import type { FakesReady } from './fakes-process.ts';
import type { FakesLatency } from './scenario.ts';

const FAKES = fileURLToPath(new URL('./fakes-process.ts', import.meta.url));
const SERVICE_ENTRY = fileURLToPath(new URL('./service-entry.ts', import.meta.url));
const READY_TIMEOUT_MS = 15_000;

export const PUBLIC_BASE_URL = 'https://voice.example.test';
export const AUTH_TOKEN = 'bench-twilio-auth-token-0123456789';

/** Milliseconds on CLOCK_MONOTONIC. */
export const clock = (): number => Number(process.hrtime.bigint()) / 1e6;

export interface Fakes {
  agentUrl: string;
  elevenLabsUrl: string;
  close(): Promise<void>;
}

export async function startFakes(latency: FakesLatency): Promise<Fakes> {
  const child = spawn(process.execPath, [FAKES, JSON.stringify(latency)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const ready = await new Promise<FakesReady>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`the fakes process exited (${code}) before it was ready`)));
    child.once('message', resolve);
  });
  child.removeAllListeners('exit');
  return { agentUrl: ready.agentUrl, elevenLabsUrl: ready.elevenLabsUrl, close: () => stop(child) };
}

export interface ServiceProcess {
  url: string;
  pid: number;
  /** From spawn to the first `/healthz` 200. */
  readyMs: number;
  /** Heap and buffers after a full GC (bench/service-entry.ts only). */
  memory(): Promise<NodeJS.MemoryUsage>;
  close(): Promise<void>;
}

/**
 * Starts the service with a fresh DATA_DIR and waits for `/healthz`, polling every
 * `pollMs`. Its environment is `env` on top of the benchmark's Twilio settings and
 * PATH: nothing leaks in from the shell. `entry` starts another entry point than
 * bench/service-entry.ts (with `args` its arguments); `nodeOptions` go to node
 * first (`--cpu-prof`).
 */
export async function startService(
  env: Record<string, string>,
  options: { entry?: string; args?: string[]; nodeOptions?: string[]; pollMs?: number } = {},
): Promise<ServiceProcess> {
  const dataDir = mkdtempSync(join(tmpdir(), 'heyai-bench-'));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const own = options.entry === undefined;
  const startedAt = clock();
  const child = spawn(process.execPath, [...(options.nodeOptions ?? []), ...(own ? ['--expose-gc', SERVICE_ENTRY] : [options.entry!]), ...(options.args ?? [])], {
    env: { PATH: process.env.PATH ?? '', HOST: '127.0.0.1', PORT: String(port), PUBLIC_BASE_URL, TWILIO_AUTH_TOKEN: AUTH_TOKEN, DATA_DIR: dataDir, LOG_LEVEL: 'warn', ...env },
    stdio: own ? ['ignore', 'pipe', 'pipe', 'ipc'] : ['ignore', 'pipe', 'pipe'],
  });
  const output: string[] = [];
  const keep = (data: Buffer) => output.length < 200 && output.push(data.toString('utf8'));
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  for (;;) {
    const status = await fetch(`${url}/healthz`).then(
      async (response) => (await response.arrayBuffer(), response.status),
      () => 0, // not listening yet
    );
    if (status === 200) break;
    if (child.exitCode !== null) throw new Error(`the service exited early:\n${output.join('')}`);
    if (clock() - startedAt > READY_TIMEOUT_MS) {
      child.kill('SIGKILL');
      throw new Error(`the service was not ready within ${READY_TIMEOUT_MS} ms:\n${output.join('')}`);
    }
    await new Promise((resolve) => setTimeout(resolve, options.pollMs ?? 5));
  }
  return {
    url,
    pid: child.pid!,
    readyMs: clock() - startedAt,
    memory: () =>
      new Promise((resolve) => {
        child.once('message', (reply: NodeJS.MemoryUsage) => resolve(reply));
        child.send({ type: 'memory' });
      }),
    async close() {
      await stop(child);
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

/** User + system CPU time a process has used, ms (/proc/<pid>/stat, 10 ms clock ticks on Linux). */
export function cpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name, which is in parentheses and may hold spaces.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}
