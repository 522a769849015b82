/**
 * The load run: many concurrent calls against the real service on loopback, with
 * the fake agent and the fake ElevenLabs, for a bounded time. Each simulated caller
 * places call after call (greeting, a few turns, goodbye, status callback) until
 * the time is up; afterwards every finished call's stored record is checked
 * against what its caller said, so a lost or duplicated turn is counted, not
 * guessed at. Memory is measured after a forced GC between two equal halves of
 * the run (after pending timeouts have fired): what the second half retains, per
 * finished call, is the leak figure.
 *
 *   node bench/load.ts --seconds 60 [--calls 200] [--turns 3] [--think-ms 250]
 *
 * The hardening test (test/hardening/load.test.ts) runs the same code for a
 * shorter time. Figures and how to read them: docs/hardening.md.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { loadConfig } from '../src/config.ts';
import { createLogger } from '../src/logger.ts';
import { newCallSid, SimulatedCall, type TurnResult } from '../src/phone/twilio-caller.ts';
import { createService, type Service } from '../src/service.ts';
import { defaultAnswer, startFakeAgent, type FakeAgent } from '../test/fakes/agent-server.ts';
import { startFakeElevenLabs, type FakeElevenLabs } from '../test/fakes/elevenlabs-server.ts';
import { callerNumber } from './calls.ts';
import { AUTH_TOKEN, PUBLIC_BASE_URL } from './processes.ts';
import { quantile } from './quantile.ts';
import { ELEVENLABS_KEY } from './scenario.ts';
/**
 * For memory figures: an agent timeout far above the fake's answer time but short
 * enough to have fired, like every other timeout in a turn (speech: 2.5 s), by the
 * time memory is measured `SETTLE_MS` after the last call.
 */
export const LOAD_ENV = { AGENT_TIMEOUT_MS: '5000' };
export const SETTLE_MS = 9_000;
/** Error and warning lines kept for the report; the rest are only counted. */
const KEPT_LOG_LINES = 50;

export interface LoadTarget {
  service: Service;
  address: string;
  agent: FakeAgent;
  eleven: FakeElevenLabs;
  /** Log lines by level (`info`, `warn`, ...), and the first error/warning lines. */
  logCounts: Record<string, number>;
  problems: string[];
  /** Every raw log line is checked for these as it is written. */
  leakedSecrets: number;
  close(): Promise<void>;
}

/** The service as an operator runs it (env through loadConfig), with fakes on loopback and a counting log sink. */
export async function startLoadTarget(env: Record<string, string> = {}): Promise<LoadTarget> {
  const agent = await startFakeAgent();
  const eleven = await startFakeElevenLabs({ apiKey: ELEVENLABS_KEY });
  const dataDir = mkdtempSync(join(tmpdir(), 'heyai-load-'));
  const config = loadConfig({
    PORT: '0',
    HOST: '127.0.0.1',
    PUBLIC_BASE_URL,
    TWILIO_AUTH_TOKEN: AUTH_TOKEN,
    DATA_DIR: dataDir,
    LOG_LEVEL: 'info',
    KOOZIE_AGENT_URI: agent.url,
    ELEVENLABS_API_KEY: ELEVENLABS_KEY,
    ELEVEN_VOICE_ID: 'voice-1',
    ELEVENLABS_BASE_URL: eleven.url,
    // The fake ElevenLabs has no plan limit: the service's own limit would be what is measured.
    ELEVENLABS_MAX_CONCURRENCY: '1000',
    // Every turn must be voiced: on a starved 2-core machine a loopback synthesis can outlast
    // the production 2.5 s, a deadline meant for ElevenLabs' latency, not for this machine's.
    ELEVENLABS_DEADLINE_MS: '8000',
    ...env,
  });
  const logCounts: Record<string, number> = {};
  const problems: string[] = [];
  let leakedSecrets = 0;
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (!line) continue;
        if (line.includes(AUTH_TOKEN) || line.includes(ELEVENLABS_KEY)) leakedSecrets += 1;
        const level = String((JSON.parse(line) as { level?: unknown }).level);
        logCounts[level] = (logCounts[level] ?? 0) + 1;
        if ((level === 'error' || level === 'warn' || level === 'fatal') && problems.length < KEPT_LOG_LINES) problems.push(line);
      }
      done();
    },
  });
  const service = await createService(config, createLogger(config.logLevel, sink));
  const address = await service.app.listen({ port: 0, host: '127.0.0.1' });
  await service.warmUp();
  return {
    service,
    address,
    agent,
    eleven,
    logCounts,
    problems,
    get leakedSecrets() {
      return leakedSecrets;
    },
    async close() {
      await service.close();
      await agent.close();
      await eleven.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

export interface LoadOptions {
  /** Calls in progress at any moment. */
  concurrency: number;
  /** New calls start until this much time has passed; calls under way then finish. */
  durationMs: number;
  /** Caller turns per call before the goodbye. */
  turnsPerCall: number;
  /** The caller's pause before each turn (Twilio's speech recognition takes longer). */
  thinkMs: number;
}

export interface LoadResult {
  durationMs: number;
  callsFinished: number;
  turns: number;
  webhooks: number;
  audioFetches: number;
  /** Requests that did not answer 200 with something Twilio can use, calls that broke off. */
  errors: string[];
  /** Calls whose stored record does not hold exactly the turns their caller said, answered. */
  lost: string[];
  webhookMs: Percentiles;
  audioMs: Percentiles;
  turnMs: Percentiles;
}

export interface Percentiles {
  p50: number;
  p95: number;
  p99: number;
  max: number;
}

interface FinishedCall {
  callSid: string;
  said: string[];
}

/** Runs `concurrency` callers placing calls back to back for `durationMs`. */
export async function runLoad(target: Pick<LoadTarget, 'service' | 'address'>, options: LoadOptions): Promise<LoadResult> {
  const webhookMs: number[] = [];
  const audioMs: number[] = [];
  const turnMs: number[] = [];
  const errors: string[] = [];
  const finished: FinishedCall[] = [];
  let nextCall = 0;

  const timedFetch: typeof fetch = async (input, init) => {
    const started = performance.now();
    const response = await fetch(input, init);
    const body = await response.arrayBuffer();
    (init?.method === 'POST' ? webhookMs : audioMs).push(performance.now() - started);
    const empty = response.status === 204 || response.status === 304;
    return new Response(empty ? null : body, { status: response.status, headers: response.headers });
  };

  const started = performance.now();
  const until = started + options.durationMs;
  const caller = async (): Promise<void> => {
    while (performance.now() < until) {
      const n = nextCall++;
      const call = new SimulatedCall({
        publicBaseUrl: PUBLIC_BASE_URL,
        targetBaseUrl: target.address,
        authToken: AUTH_TOKEN,
        callSid: newCallSid(),
        from: callerNumber(n),
        fetch: timedFetch,
      });
      const said: string[] = [];
      try {
        const voiced = target.service.voice !== undefined;
        checkTurn(await call.dial(), false, voiced);
        for (let t = 0; t < options.turnsPerCall; t++) {
          await pause(options.thinkMs);
          const words = `caller ${n} turn ${t} asks about order ${n * 10 + t}`;
          said.push(words);
          const turn = await call.say(words);
          checkTurn(turn, false, voiced);
          turnMs.push(turn.elapsedMs);
        }
        await pause(options.thinkMs);
        checkTurn(await call.say('Thanks, goodbye!'), true, voiced);
        const status = await call.hangUp('completed');
        if (status !== 200) throw new Error(`status callback answered ${status}`);
        finished.push({ callSid: call.callSid, said });
      } catch (error) {
        errors.push(`call ${call.callSid}: ${error instanceof Error ? error.message : String(error)}`);
      }
    }
  };
  await Promise.all(Array.from({ length: options.concurrency }, caller));
  const durationMs = performance.now() - started;

  const lost: string[] = [];
  for (const call of finished) {
    const problem = await checkRecord(target.service, call);
    if (problem) lost.push(`call ${call.callSid}: ${problem}`);
  }
  return {
    durationMs,
    callsFinished: finished.length,
    turns: turnMs.length,
    webhooks: webhookMs.length,
    audioFetches: audioMs.length,
    errors,
    lost,
    webhookMs: percentiles(webhookMs),
    audioMs: percentiles(audioMs),
    turnMs: percentiles(turnMs),
  };
}

/** A healthy turn ends at a <Gather> (or the hang-up for the goodbye), in the synthesised voice when there is one. */
function checkTurn(turn: TurnResult, last: boolean, voiced: boolean) {
  if (turn.ended !== last) throw new Error(last ? 'the goodbye did not end the call' : 'the call ended early');
  if (voiced && !turn.heard.some((h) => h.verb === 'Play')) throw new Error(`no synthesised audio in: ${turn.documents.join(' ')}`);
}

async function checkRecord(service: Service, call: FinishedCall): Promise<string | undefined> {
  const record = await service.store.getRecord(call.callSid);
  if (!record) return 'no record';
  if (record.status !== 'completed' || record.endReason !== 'goodbye') return `ended ${record.status}/${record.endReason}`;
  const expected = call.said.map((said, i) => ({
    caller: said,
    reply: defaultAnswer({
      message: said,
      history: Array.from({ length: 2 * i }, () => ({ role: 'user' as const, content: '' })),
      callSid: call.callSid,
    }),
  }));
  const stored = record.turns.map((t) => ({ caller: t.caller, reply: t.reply, failure: t.failure, voicedBy: t.voicedBy }));
  if (stored.length !== expected.length) return `${stored.length} turns stored, ${expected.length} said`;
  for (const [i, turn] of stored.entries()) {
    if (turn.caller !== expected[i]!.caller || turn.reply !== expected[i]!.reply) return `turn ${i} differs: ${JSON.stringify(turn)}`;
    if (turn.failure || turn.voicedBy !== (service.voice ? 'audio' : 'say')) return `turn ${i}: ${turn.failure ?? `voiced by ${turn.voicedBy}`}`;
  }
  return undefined;
}

export function percentiles(values: number[]): Percentiles {
  const at = (q: number) => round(values.length === 0 ? 0 : quantile(values, q));
  return { p50: at(0.5), p95: at(0.95), p99: at(0.99), max: at(1) };
}

function round(ms: number): number {
  return Math.round(ms * 10) / 10;
}

function pause(ms: number): Promise<void> {
  // Jitter, so callers do not march in step.
  return ms > 0 ? new Promise((resolve) => setTimeout(resolve, ms / 2 + Math.random() * ms)) : Promise.resolve();
}

/**
 * A garbage collector to measure retained memory: `--expose-gc` when node was
 * started with it, otherwise switched on at run time (V8 reads the flag when a
 * new context is created).
 */
export function garbageCollector(): () => void {
  const exposed = (globalThis as { gc?: () => void }).gc;
  if (typeof exposed === 'function') return exposed;
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
}

export interface MemoryFigures {
  /** Heap used after GC, MB, before the first half and after each half. */
  heapMb: [number, number, number];
  /** Buffers (audio cache) after GC, MB, same points. */
  buffersMb: [number, number, number];
  /** Heap retained per call finished in the second half, bytes. */
  heapPerCallBytes: number;
  buffersPerCallBytes: number;
}

/** Settled memory: fakes' request logs cleared (they are not the service's), then GC twice. */
export function settledMemory(target: Pick<LoadTarget, 'agent' | 'eleven'>, gc: () => void): { heap: number; buffers: number } {
  target.agent.requests.length = 0;
  target.agent.sentChunks.length = 0;
  target.eleven.requests.length = 0;
  gc();
  gc();
  const usage = process.memoryUsage();
  return { heap: usage.heapUsed, buffers: usage.arrayBuffers };
}

/**
 * Two equal halves; memory measured after GC before, between and after them.
 * `settleMs` waits first, so timers still pending from the last calls (agent and
 * speech timeouts hold their signals until they fire) are not counted as retained.
 */
export async function runLoadInHalves(target: LoadTarget, options: LoadOptions, settleMs = 0) {
  const gc = garbageCollector();
  const half = { ...options, durationMs: options.durationMs / 2 };
  const settle = () => new Promise((resolve) => setTimeout(resolve, settleMs));
  const m0 = settledMemory(target, gc);
  const first = await runLoad(target, half);
  await settle();
  const m1 = settledMemory(target, gc);
  const second = await runLoad(target, half);
  await settle();
  const m2 = settledMemory(target, gc);
  const mb = (bytes: number) => Math.round((bytes / 2 ** 20) * 10) / 10;
  const perCall = (a: number, b: number) => Math.round((b - a) / Math.max(1, second.callsFinished));
  const memory: MemoryFigures = {
    heapMb: [mb(m0.heap), mb(m1.heap), mb(m2.heap)],
    buffersMb: [mb(m0.buffers), mb(m1.buffers), mb(m2.buffers)],
    heapPerCallBytes: perCall(m1.heap, m2.heap),
    buffersPerCallBytes: perCall(m1.buffers, m2.buffers),
  };
  return { first, second, memory };
}

/** One markdown table for the figures (docs/hardening.md). */
export function loadTable(options: LoadOptions, halves: Awaited<ReturnType<typeof runLoadInHalves>>, target: LoadTarget): string {
  const { first, second, memory } = halves;
  const both = [first, second];
  const sum = (f: (r: LoadResult) => number) => both.reduce((n, r) => n + f(r), 0);
  const seconds = sum((r) => r.durationMs) / 1000;
  const rows: Array<[string, string]> = [
    ['concurrent calls', String(options.concurrency)],
    ['duration', `${seconds.toFixed(1)} s (two halves)`],
    ['turns per call, think time', `${options.turnsPerCall} + goodbye, ${options.thinkMs} ms ±50%`],
    ['calls finished', String(sum((r) => r.callsFinished))],
    ['caller turns answered', `${sum((r) => r.turns)} (${(sum((r) => r.turns) / seconds).toFixed(0)}/s)`],
    ['webhooks, audio fetches', `${sum((r) => r.webhooks)}, ${sum((r) => r.audioFetches)} (${(sum((r) => r.webhooks + r.audioFetches) / seconds).toFixed(0)} req/s)`],
    ['errors (non-200, broken calls)', String(sum((r) => r.errors.length))],
    ['lost or wrong turns in stored records', String(sum((r) => r.lost.length))],
    ['webhook latency p50 / p95 / p99 / max', fmt(second.webhookMs)],
    ['audio fetch latency p50 / p99', `${second.audioMs.p50} / ${second.audioMs.p99} ms`],
    ['turn latency (speech → audio fetched) p50 / p99', `${second.turnMs.p50} / ${second.turnMs.p99} ms`],
    ['heap after GC: start / half / end', `${memory.heapMb.join(' / ')} MB`],
    ['heap retained per call (second half, after GC)', `${memory.heapPerCallBytes} B`],
    ['audio buffers after GC: start / half / end', `${memory.buffersMb.join(' / ')} MB`],
    ['error-level log lines, secrets in logs', `${target.logCounts.error ?? 0}, ${target.leakedSecrets}`],
  ];
  return ['| load run | figure |', '|---|---|', ...rows.map(([k, v]) => `| ${k} | ${v} |`)].join('\n');
}

function fmt(p: Percentiles): string {
  return `${p.p50} / ${p.p95} / ${p.p99} / ${p.max} ms`;
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '60' },
      calls: { type: 'string', default: '200' },
      turns: { type: 'string', default: '3' },
      'think-ms': { type: 'string', default: '250' },
      /** The phone's own voice only: no ElevenLabs, so no audio cache in the memory figures. */
      'no-voice': { type: 'boolean', default: false },
    },
  });
  const options: LoadOptions = {
    concurrency: Number(values.calls),
    durationMs: Number(values.seconds) * 1000,
    turnsPerCall: Number(values.turns),
    thinkMs: Number(values['think-ms']),
  };
  const target = await startLoadTarget({ ...LOAD_ENV, ...(values['no-voice'] ? { ELEVENLABS_API_KEY: '', ELEVEN_VOICE_ID: '' } : {}) });
  try {
    console.log(
      `Load: ${options.concurrency} concurrent calls for ${values.seconds} s against ${target.address}, ${target.service.voice ? 'fake ElevenLabs voice' : "the phone's own voice"}…`,
    );
    const halves = await runLoadInHalves(target, options, SETTLE_MS);
    console.log(loadTable(options, halves, target));
    const errors = [...halves.first.errors, ...halves.second.errors];
    const lost = [...halves.first.lost, ...halves.second.lost];
    for (const line of [...errors, ...lost].slice(0, 10)) console.log(`  ${line}`);
    for (const line of target.problems.slice(0, 10)) console.log(`  log: ${line}`);
    if (errors.length > 0 || lost.length > 0 || (target.logCounts.error ?? 0) > 0 || target.leakedSecrets > 0) process.exitCode = 1;
  } finally {
    await target.close();
  }
}
