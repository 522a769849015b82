/**
 * `npm run bench`: how soon a caller hears the answer, and what the service costs.
 *
 * The service runs as its own process (`node src/server.ts`, the embedded store),
 * the fake agent and fake ElevenLabs in another (bench/fakes-process.ts), and the
 * simulated Twilio callers in this one, so the service's event loop and CPU time
 * are its own. Phases, each against a freshly started service:
 *
 * - latency: `--calls` concurrent calls of `--turns` turns, audio played in real
 *   time. First audio after the caller's speech, next to the floor the fakes
 *   allow, and next to the old way (whole answer, then its synthesis), which the
 *   service still runs with REPLY_PIECES=whole.
 * - formats: the same calls with ELEVEN_OUTPUT_FORMAT ulaw_8000, mp3_44100_128 and mp3_22050_32.
 * - load: `--load-calls` concurrent calls the same way: the service's own time
 *   per webhook (its time in the service minus the time waiting on the fakes,
 *   each process timed on its own side: bench/overhead.ts), memory per call, GC
 *   pauses, and how much CPU the other processes on the machine took.
 * - capacity: callers asking back to back, nobody listening: turns per second
 *   and CPU per turn.
 * - webhooks: cheap webhooks back to back: webhooks per second.
 * - cold: spawn to the first /healthz 200, of node src/server.ts and of the
 *   production build the image runs.
 * - store (only when asked for): the embedded store alone, in this process, with
 *   a real call's payload: how long its loads and commits hold the event loop
 *   (bench/store.ts).
 *
 *   npm run bench -- --calls 50 --turns 3 --agent-first-ms 300 --tokens-per-sec 40 --tts-first-byte-ms 150
 *   npm run bench -- --phases latency --calls 10
 *   npm run bench -- --phases store --store-rounds 15
 *   npm run bench -- --phases load --service-node-options="--cpu-prof --cpu-prof-dir=prof"
 *   taskset -c 0 npm run bench -- --phases load --service-cpus 1   (a core of its own for the service)
 *   npm run bench -- --phases load --service-entry floor   (bench/floor-server.ts instead: the crossings alone)
 *   npm run bench -- --phases load --others-policy batch   (callers and fakes never preempt the service: bench/wakeup.ts)
 *
 * Figures and how to read them: docs/performance.md.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { cpus, loadavg, setPriority } from 'node:os';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { runCalls, runTurnsFor, type CallsResult, type TurnTiming } from './calls.ts';
import { measureColdStart } from './cold-start.ts';
import type { FakesLatency } from './fakes-process.ts';
import { measureOverhead } from './overhead.ts';
import { quantile } from './quantile.ts';
import { cpuMs, machineCpu, ownCpuMs, startFakes, startService, type ServiceProcess } from './processes.ts';
import type { ProbeReply } from './service-probe.ts';
import { answerFor, ELEVENLABS_KEY, firstPieceText, wordCount, wordIntervalMs } from './scenario.ts';
import { largestStoredCall, measureStore } from './store.ts';
import { runWebhooks } from './webhooks.ts';

const FLOOR_SERVER = fileURLToPath(new URL('./floor-server.ts', import.meta.url));
/** Event-loop delay sampling interval of the benchmark's own loop. */
const LOOP_RESOLUTION_MS = 5;

const { values: args } = parseArgs({
  options: {
    calls: { type: 'string', default: '50' },
    turns: { type: 'string', default: '3' },
    'agent-first-ms': { type: 'string', default: '300' },
    'tokens-per-sec': { type: 'string', default: '40' },
    'tts-first-byte-ms': { type: 'string', default: '150' },
    'tts-chars-per-sec': { type: 'string', default: '0' },
    deadline: { type: 'string', default: '3000' },
    format: { type: 'string', default: 'ulaw_8000' },
    'load-calls': { type: 'string', default: '200' },
    playback: { type: 'string', default: '1' },
    'caller-speaks-ms': { type: 'string', default: '1000' },
    'capacity-callers': { type: 'string', default: '200' },
    'capacity-seconds': { type: 'string', default: '10' },
    'webhook-clients': { type: 'string', default: '32' },
    'webhook-seconds': { type: 'string', default: '5' },
    'cold-starts': { type: 'string', default: '7' },
    phases: { type: 'string', default: 'latency,formats,load,capacity,webhooks,cold' },
    modes: { type: 'string', default: 'pieces,whole' },
    json: { type: 'string' },
    'service-node-options': { type: 'string', default: '' },
    'service-cpus': { type: 'string', default: '' },
    /** Calls start spread over this long; default 20 ms per call, at most 3 s. */
    'ramp-ms': { type: 'string' },
    /** With `--phases load` only: the callers and the fakes run at this niceness, the service at its own. */
    'others-nice': { type: 'string', default: '0' },
    /** With `--phases load` only: `batch` runs the callers and the fakes as SCHED_BATCH (never preempting the service on wake-up). */
    'others-policy': { type: 'string', default: 'default' },
    'store-rounds': { type: 'string', default: '15' },
    /** `floor`: bench/floor-server.ts instead of the service, to measure what the machine charges for the crossings alone. */
    'service-entry': { type: 'string' },
  },
});

const num = (name: keyof typeof args): number => {
  const value = Number(args[name]);
  if (!Number.isFinite(value) || value < 0) throw new Error(`--${name} must be a number, got ${String(args[name])}`);
  return value;
};

const latency: FakesLatency = {
  agentFirstMs: num('agent-first-ms'),
  tokensPerSec: num('tokens-per-sec'),
  ttsFirstByteMs: num('tts-first-byte-ms'),
  ttsCharsPerSec: num('tts-chars-per-sec'),
  outputFormat: args.format!,
};
const phases = new Set(args.phases!.split(','));
const othersNice = num('others-nice');
if (!Number.isInteger(othersNice) || othersNice > 19) throw new Error(`--others-nice must be a whole number from 0 to 19, got ${args['others-nice']}`);
// A process cannot raise its priority back, and every service started later would
// inherit the lower one: so only for a run of the load phase alone.
const loadAlone = phases.size === 1 && phases.has('load');
if (othersNice > 0 && !loadAlone) throw new Error('--others-nice applies to `--phases load` alone');
const othersPolicy = args['others-policy']!;
if (othersPolicy !== 'default' && othersPolicy !== 'batch') throw new Error(`--others-policy must be default or batch, got ${othersPolicy}`);
// Same reason: every process this one starts afterwards would inherit the policy.
if (othersPolicy === 'batch' && !loadAlone) throw new Error('--others-policy applies to `--phases load` alone');
const serviceEntry = args['service-entry'];
if (serviceEntry !== undefined && serviceEntry !== 'floor') throw new Error(`--service-entry must be floor, got ${serviceEntry}`);
if (serviceEntry && !loadAlone) throw new Error('--service-entry applies to `--phases load` alone');
const modes = args.modes!.split(',') as Array<'pieces' | 'whole'>;
const report: Record<string, unknown> = { latency, args };
let nextCallIndex = 0;

const fakes = await startFakes(latency);
const load = () => loadavg().map((l) => l.toFixed(2)).join(' ');
console.log(`Machine: ${cpus().length} cores, load average ${load()} at the start (other work on the machine skews every figure).`);
try {
  console.log(
    `Scenario: agent first token ${latency.agentFirstMs} ms then ${latency.tokensPerSec} tokens/s ` +
      `(one word every ${wordIntervalMs(latency.tokensPerSec).toFixed(1)} ms), ElevenLabs first byte ${latency.ttsFirstByteMs} ms` +
      `${latency.ttsCharsPerSec > 0 ? ` then ${latency.ttsCharsPerSec} chars/s` : ', whole audio at once'}, ${latency.outputFormat}, ` +
      `webhook deadline ${args.deadline} ms; answers of ${answerLengths()} words.\n`,
  );
  if (phases.has('latency')) await latencyPhase();
  if (phases.has('formats')) await formatsPhase();
  if (phases.has('load')) await loadPhase();
  if (phases.has('capacity')) await capacityPhase();
  if (phases.has('webhooks')) await webhookPhase();
  if (phases.has('cold')) await coldPhase();
  if (phases.has('store')) await storePhase();
} finally {
  await fakes.close();
}
console.log(`\nLoad average at the end: ${load()}.`);
if (args.json) writeFileSync(args.json, `${JSON.stringify(report, null, 2)}\n`);

function serviceEnv(mode: 'pieces' | 'whole', outputFormat = latency.outputFormat): Record<string, string> {
  return {
    KOOZIE_AGENT_URI: fakes.agentUrl,
    ELEVENLABS_API_KEY: ELEVENLABS_KEY,
    ELEVEN_VOICE_ID: 'bench-voice',
    ELEVENLABS_BASE_URL: fakes.elevenLabsUrl,
    ELEVEN_OUTPUT_FORMAT: outputFormat,
    // The fake ElevenLabs has no plan limit: the service's own limit would be what is measured.
    ELEVENLABS_MAX_CONCURRENCY: '1000',
    WEBHOOK_DEADLINE_MS: args.deadline!,
    REPLY_PIECES: mode === 'whole' ? 'whole' : 'sentences',
  };
}

async function withService<T>(mode: 'pieces' | 'whole', work: (service: ServiceProcess) => Promise<T>, outputFormat?: string): Promise<T> {
  const nodeOptions = args['service-node-options']!.split(' ').filter(Boolean);
  const cpusOption = args['service-cpus']!;
  const service = await startService(serviceEnv(mode, outputFormat), {
    probe: true,
    nodeOptions,
    ...(cpusOption ? { cpus: cpusOption } : {}),
    ...(serviceEntry === 'floor' ? { entry: FLOOR_SERVER } : {}),
  });
  // The fixed phrases are synthesised in the background after start; let that finish.
  await sleep(latency.ttsFirstByteMs * 2 + 500);
  await fakes.drain();
  try {
    return await work(service);
  } finally {
    await service.close();
  }
}

async function callsPhase(mode: 'pieces' | 'whole', calls: number) {
  return withService(mode, async (service) => {
    const progress = { active: 0 };
    const idle = await service.probe({ gc: true, reset: true });
    await service.timings();
    const cpuBefore = { service: cpuMs(service.pid), fakes: cpuMs(fakes.pid), bench: ownCpuMs(), machine: machineCpu() };
    const benchLoop = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS });
    benchLoop.enable();
    // Once every call is in progress, and again a few seconds later: the heap after a full GC.
    let active: ProbeReply | undefined;
    const sampler = setInterval(() => {
      if (active || progress.active < calls) return;
      active = { type: 'probe', heapUsed: 0, rss: 0, arrayBuffers: 0, loopDelayMs: { p50: 0, p99: 0, max: 0 }, gc: { count: 0, totalMs: 0, maxMs: 0, over5Ms: 0 } };
      setTimeout(() => void service.probe({ gc: true, reset: false }).then((reply) => (active = reply)), 3_000);
    }, 100);
    if (othersNice > 0) {
      // The service is running: from here on the callers (this thread) and the fakes
      // yield the CPU to it, as they would if they ran on other machines.
      setPriority(fakes.pid, othersNice);
      setPriority(othersNice);
    }
    if (othersPolicy === 'batch') {
      // Every thread of both, so that a wake-up never preempts the service mid-write
      // (bench/wakeup.ts): they would not share its cores in production.
      for (const pid of [fakes.pid, process.pid]) {
        try {
          execFileSync('chrt', ['--all-tasks', '--batch', '--pid', '0', String(pid)], { stdio: ['ignore', 'ignore', 'pipe'] });
        } catch (error) {
          throw new Error(`--others-policy batch needs Linux's chrt (util-linux): ${error instanceof Error ? error.message : String(error)}`);
        }
      }
    }
    const firstCallIndex = nextCallIndex;
    nextCallIndex += calls;
    let result: CallsResult;
    try {
      result = await runCalls({
        serviceUrl: service.url,
        calls,
        turns: num('turns'),
        playback: num('playback'),
        callerSpeaksMs: num('caller-speaks-ms'),
        rampMs: args['ramp-ms'] ? num('ramp-ms') : Math.min(3_000, calls * 20),
        firstCallIndex,
        progress,
      });
    } finally {
      clearInterval(sampler);
      benchLoop.disable();
    }
    const machine = machineCpu();
    const cpu = cpuMs(service.pid) - cpuBefore.service;
    const cpuShares = {
      service: cpu,
      fakes: cpuMs(fakes.pid) - cpuBefore.fakes,
      bench: ownCpuMs() - cpuBefore.bench,
      machine: machine.busyMs - cpuBefore.machine.busyMs,
      machineTotal: machine.totalMs - cpuBefore.machine.totalMs,
    };
    const end = await service.probe({ gc: false, reset: true });
    const timings = await service.timings();
    const fakeLog = await fakes.drain();
    const orders = new Map(result.turns.map((t) => [t.callSid, t.order]));
    const overhead = measureOverhead(result.webhooks, fakeLog.requests, orders, timings);
    const waits = timings.cpuWait;
    const serviceCpuWaitMs = waits.length > 1 ? waits.at(-1)![1] - waits[0]![1] : NaN;
    const memory = active && active.heapUsed > 0 ? { idle, active, calls } : undefined;
    const loops = {
      service: end.loopDelayMs,
      bench: { p50: late(benchLoop.percentile(50)), p99: late(benchLoop.percentile(99)), max: late(benchLoop.max) },
      fakes: fakeLog.loopDelayMs,
    };
    return { result, overhead, cpu, cpuShares, serviceCpuWaitMs, gc: end.gc, memory, loops };
  });
}

async function latencyPhase() {
  const calls = num('calls');
  const rows: string[][] = [];
  const gapRows: string[][] = [];
  const summary: Record<string, unknown> = {};
  let floorRow: string[] | undefined;
  for (const mode of modes) {
    const { result, overhead } = await callsPhase(mode, calls);
    const turns = result.turns.filter((t) => t.firstReplyAt !== undefined);
    const first = turns.map((t) => t.firstReplyAt! - t.startedAt);
    const overFloor = turns.map((t) => t.firstReplyAt! - t.startedAt - floorMs(t, mode));
    floorRow ??= ['floor: agent to first piece + TTS first byte', ...quantiles(result.turns.map((t) => floorMs(t, 'pieces')))];
    rows.push([label(mode), ...quantiles(first)], [`  minus its floor`, ...quantiles(overFloor)]);
    const gaps = turns.flatMap((t) => t.gaps);
    const firstSound = result.turns.filter((t) => t.firstSoundAt !== undefined).map((t) => t.firstSoundAt! - t.startedAt);
    gapRows.push([
      label(mode),
      String(turns.length),
      fmt(quantile(firstSound, 0.5)),
      fmt(Math.max(...firstSound)),
      `${mean(turns.map((t) => t.replySounds)).toFixed(1)}`,
      String(turns.filter((t) => t.holdSounds > 0).length),
      fmt(quantile(gaps, 0.5)),
      fmt(quantile(gaps, 0.99)),
      fmt(Math.max(0, ...gaps)),
    ]);
    summary[mode] = {
      turns: turns.length,
      unanswered: result.turns.length - turns.length,
      failures: result.failures,
      firstAudioMs: stats(first),
      firstSoundMs: stats(firstSound),
      overFloorMs: stats(overFloor),
      gapMs: stats(gaps),
      overheadMs: stats(overhead.webhooks.map((w) => w.overheadMs)),
    };
    if (result.failures.length > 0) console.log(`  ${result.failures.length} ${mode} calls failed, e.g. ${result.failures[0]}`);
  }
  const wholeFloor = ['floor of the old way: whole answer + TTS first byte', ...quantiles(answersOf(calls).map((a) => wholeFloorMs(a)))];
  console.log(`First audio: /speech-result sent → first answer audio playable (${calls} concurrent calls × ${num('turns')} turns), ms`);
  table(['', 'p50', 'p95', 'p99', 'max'], [floorRow!, wholeFloor, ...rows]);
  const pieces = summary.pieces as { firstAudioMs: { p50: number } } | undefined;
  const whole = summary.whole as { firstAudioMs: { p50: number } } | undefined;
  if (pieces && whole) console.log(`Streaming pieces is ${(whole.firstAudioMs.p50 / pieces.firstAudioMs.p50).toFixed(2)}x sooner at p50.`);
  console.log('\nThe answer as heard: first sound of any kind (a hold, if the answer is late), sounds per answer, turns with a hold, silences between sounds after the first (ms)');
  table(['', 'turns', 'first sound p50', 'max', 'sounds', 'held', 'gap p50', 'gap p99', 'gap max'], gapRows);
  report.latency = summary;
}

/**
 * ulaw_8000 (played as WAV) against MP3: the same calls with each format. The fake
 * ElevenLabs sends 10 ms of speech per character at each format's own byte rate, so
 * the bytes a turn compare as the real formats' do; its first byte comes as soon for
 * every format, so first audio compares only the service's handling.
 */
async function formatsPhase() {
  const rows: string[][] = [];
  const summary: Record<string, unknown> = {};
  for (const outputFormat of ['ulaw_8000', 'mp3_44100_128', 'mp3_22050_32']) {
    fakes.configure({ ...latency, outputFormat });
    const result = await withService(
      modes[0]!,
      async (service) => {
        const cpuBefore = cpuMs(service.pid);
        const calls = Math.min(20, num('calls'));
        const run = await runCalls({ serviceUrl: service.url, calls, turns: 2, playback: 0, callerSpeaksMs: 200, rampMs: 500, firstCallIndex: nextCallIndex });
        nextCallIndex += calls;
        return { run, cpu: cpuMs(service.pid) - cpuBefore };
      },
      outputFormat,
    );
    const turns = result.run.turns.filter((t) => t.firstReplyAt !== undefined);
    const first = turns.map((t) => t.firstReplyAt! - t.startedAt);
    const bytesPerTurn = turns.reduce((sum, t) => sum + t.audioBytes, 0) / Math.max(1, turns.length);
    rows.push([outputFormat, turns[0]?.contentType ?? '-', fmt(quantile(first, 0.5)), fmt(quantile(first, 0.99)), (bytesPerTurn / 1024).toFixed(1), (result.cpu / Math.max(1, turns.length)).toFixed(1)]);
    summary[outputFormat] = { firstAudioMs: stats(first), bytesPerTurn, cpuMsPerTurn: result.cpu / Math.max(1, turns.length), contentType: turns[0]?.contentType };
  }
  fakes.configure(latency);
  console.log('\nOutput format: the same calls with each (no playback), ms');
  table(['ELEVEN_OUTPUT_FORMAT', 'served as', 'first audio p50', 'p99', 'KB a turn', 'CPU ms/turn'], rows);
  report.formats = summary;
}

async function loadPhase() {
  const calls = num('load-calls');
  const { result, overhead, cpu, cpuShares, serviceCpuWaitMs, gc, memory, loops } = await callsPhase(modes[0]!, calls);
  const byKind = (kind?: string) => overhead.webhooks.filter((w) => kind === undefined || w.kind === kind);
  const kinds = [undefined, 'answer', 'hold', 'plain'];
  const rows = kinds.map((kind) => {
    const hooks = byKind(kind);
    return [
      kind ?? 'all webhooks',
      String(hooks.length),
      ...quantiles(hooks.map((w) => w.overheadMs)),
      fmt(quantile(hooks.map((w) => w.totalMs), 0.99)),
    ];
  });
  console.log(
    `\n${serviceEntry === 'floor' ? 'The floor server\'s (bench/floor-server.ts: the crossings and nothing else)' : 'The service\'s'} ` +
      `own time per webhook (${calls} concurrent calls, ${label(modes[0]!)}): ` +
      `its time in the service minus waiting on the fakes, each process on its own clock, ms`,
  );
  table(['', 'count', 'p50', 'p95', 'p99', 'max', 'total p99'], rows);
  const former = (kind?: string) => `${fmt(quantile(byKind(kind).map((w) => w.formerMs), 0.5))}/${fmt(quantile(byKind(kind).map((w) => w.formerMs), 0.99))}`;
  console.log(
    `  by the former method (the caller's and the fakes' clocks), p50/p99: all ${former()}, answers ${former('answer')}, ` +
      `holds ${former('hold')}, everything else ${former('plain')}`,
  );
  const byRoute = (path: string) => overhead.webhooks.filter((w) => w.path === path).map((w) => w.overheadMs);
  const routes = ['/voice', '/speech-result', '/continue', '/call-status'];
  console.log(`  by route, p50/p99 ms: ${routes.map((r) => `${r} ${fmt(quantile(byRoute(r), 0.5))}/${fmt(quantile(byRoute(r), 0.99))}`).join(', ')}`);
  // A continuation's agent was asked by an earlier webhook: only /speech-result crosses all three.
  const staged = byKind('answer').flatMap((w) => (w.stages && w.path === '/speech-result' ? [w.stages] : []));
  if (staged.length > 0) {
    const stage = (pick: (s: NonNullable<(typeof staged)[number]>) => number) => `${fmt(quantile(staged.map(pick), 0.5))}/${fmt(quantile(staged.map(pick), 0.99))}`;
    console.log(
      `  /speech-result answers by crossing, p50/p99 ms: the request to the agent asked ${stage((s) => s.beforeAgentMs)}, ` +
        `the agent's text to ElevenLabs asked ${stage((s) => s.agentToSpeechMs)}, the audio to the answer written ${stage((s) => s.afterSpeechMs)}`,
    );
  }
  const slowest = [...byKind()].sort((a, b) => b.overheadMs - a.overheadMs).slice(0, Math.max(1, Math.ceil(byKind().length / 100)));
  const meanOf = (pick: (w: (typeof slowest)[number]) => number) => fmt(mean(slowest.map(pick)));
  console.log(
    `  the slowest 1% (${slowest.length} webhooks), mean ms: own time ${meanOf((w) => w.overheadMs)}, of which stopped for GC ${meanOf((w) => w.gcMs)}, ` +
      `ready but waiting for a CPU ${meanOf((w) => w.cpuWaitMs)}, running (its own work and other webhooks' queued ahead) ${meanOf((w) => w.overheadMs - w.gcMs - w.cpuWaitMs)}`,
  );
  if (overhead.unmatched > 0) console.log(`  (${overhead.unmatched} webhooks could not be matched to the fakes' log and are left out)`);
  const answered = result.turns.filter((t) => t.firstReplyAt !== undefined);
  const first = answered.map((t) => t.firstReplyAt! - t.startedAt);
  console.log(
    `  first audio at ${calls} calls: p50 ${fmt(quantile(first, 0.5))} ms, p99 ${fmt(quantile(first, 0.99))} ms; ` +
      `service CPU ${((cpu / result.wallMs) * 100).toFixed(0)}% of one core over ${(result.wallMs / 1000).toFixed(0)} s; ${result.failures.length} failed calls`,
  );
  console.log(
    `  event-loop delay, service: p50 ${fmt(loops.service.p50)} p99 ${fmt(loops.service.p99)} max ${fmt(loops.service.max)} ms; ` +
      `the benchmark's callers p99 ${fmt(loops.bench.p99)} max ${fmt(loops.bench.max)} ms; the fakes' p99 ${fmt(loops.fakes.p99)} max ${fmt(loops.fakes.max)} ms`,
  );
  console.log(
    `  garbage collection in the service: ${gc.count} pauses, ${fmt(gc.totalMs)} ms in all, longest ${fmt(gc.maxMs)} ms, ${gc.over5Ms} of 5 ms or more`,
  );
  const share = (ms: number) => `${((ms / result.wallMs) * 100).toFixed(0)}%`;
  const others = cpuShares.machine - cpuShares.service - cpuShares.fakes - cpuShares.bench;
  console.log(
    `  CPU over the run, of one core: service ${share(cpuShares.service)}, fakes ${share(cpuShares.fakes)}, benchmark ${share(cpuShares.bench)}, ` +
      `other work on the machine ${share(Math.max(0, others))} (the ${cpus().length} cores ${((cpuShares.machine / cpuShares.machineTotal) * 100).toFixed(0)}% busy); ` +
      `the service's main thread was ready but waiting for a CPU ${fmt(serviceCpuWaitMs)} ms in all (held by other processes or by its own GC and compiler threads)`,
  );
  if (othersNice > 0) console.log(`  the callers and the fakes ran at nice ${othersNice}, the service at its own priority (--others-nice)`);
  if (othersPolicy === 'batch') console.log('  the callers and the fakes ran as SCHED_BATCH, the service at the default policy (--others-policy batch)');
  if (memory) {
    const perCall = (memory.active.heapUsed + memory.active.arrayBuffers - memory.idle.heapUsed - memory.idle.arrayBuffers) / memory.calls;
    console.log(
      `  memory after a full GC: heap + buffers ${mb(memory.idle.heapUsed + memory.idle.arrayBuffers)} MB idle, ` +
        `${mb(memory.active.heapUsed + memory.active.arrayBuffers)} MB with ${memory.calls} calls in progress: ` +
        `${(perCall / 1024).toFixed(0)} KB per active call (resident ${mb(memory.idle.rss)} → ${mb(memory.active.rss)} MB)`,
    );
  }
  if (overhead.unmatchedInService > 0) {
    console.log(`  (${overhead.unmatchedInService} webhooks or fake requests missing from the service's log were timed on the other process's clock)`);
  }
  report.load = {
    calls,
    othersNice,
    othersPolicy,
    serviceEntry: serviceEntry ?? 'service',
    overheadMs: stats(byKind().map((w) => w.overheadMs)),
    overheadByRouteMs: Object.fromEntries(routes.map((r) => [r, stats(byRoute(r))])),
    overheadByKind: Object.fromEntries(['answer', 'hold', 'plain'].map((k) => [k, stats(byKind(k).map((w) => w.overheadMs))])),
    formerMethodMs: stats(byKind().map((w) => w.formerMs)),
    gc,
    cpuShares,
    serviceCpuWaitMs,
    unmatched: overhead.unmatched,
    unmatchedInService: overhead.unmatchedInService,
    /** Every webhook, for a closer look: route, arrival (service clock, ms), own time, GC, CPU wait, and for answers the stages. */
    webhooks: overhead.webhooks.map((w) => [w.path, w.window[0], w.overheadMs, w.gcMs, w.cpuWaitMs, w.stages]),
    slowest: [...overhead.webhooks].sort((a, b) => b.overheadMs - a.overheadMs).slice(0, 20),
    firstAudioMs: stats(first),
    cpuPercentOfOneCore: (cpu / result.wallMs) * 100,
    memory,
    loops,
    failures: result.failures.length,
  };
}

async function capacityPhase() {
  const callers = num('capacity-callers');
  const rows: string[][] = [];
  const summary: Record<string, unknown> = {};
  for (const mode of modes) {
    await withService(mode, async (service) => {
      const cpuBefore = cpuMs(service.pid);
      const result = await runTurnsFor({
        serviceUrl: service.url,
        callers,
        durationMs: num('capacity-seconds') * 1000,
        turnsPerCall: num('turns'),
        firstCallIndex: nextCallIndex,
      });
      nextCallIndex += 1_000_000;
      const cpu = cpuMs(service.pid) - cpuBefore;
      const perSec = result.turns / (result.wallMs / 1000);
      const cpuPerTurn = cpu / Math.max(1, result.turns);
      rows.push([label(mode), String(result.turns), perSec.toFixed(0), fmt(quantile(result.turnMs, 0.5)), fmt(quantile(result.turnMs, 0.99)), `${((cpu / result.wallMs) * 100).toFixed(0)}%`, cpuPerTurn.toFixed(2), String(result.failures.length)]);
      if (result.failures.length > 0) console.log(`  e.g. ${result.failures[0]}`);
      summary[mode] = { callers, turns: result.turns, turnsPerSec: perSec, cpuMsPerTurn: cpuPerTurn, turnMs: stats(result.turnMs), failures: result.failures.length };
    });
  }
  console.log(`\nCapacity: ${callers} callers asking back to back for ${num('capacity-seconds')} s, nobody listening (a turn ends when the whole answer is voiced)`);
  table(['', 'turns', 'turns/s', 'turn p50 ms', 'turn p99 ms', 'service CPU', 'CPU ms/turn', 'failures'], rows);
  report.capacity = summary;
}

async function webhookPhase() {
  await withService(modes[0]!, async (service) => {
    const cpuBefore = cpuMs(service.pid);
    const clients = num('webhook-clients');
    const result = await runWebhooks({ serviceUrl: service.url, clients, durationMs: num('webhook-seconds') * 1000, firstCallIndex: nextCallIndex });
    nextCallIndex += 1_000_000;
    const cpu = cpuMs(service.pid) - cpuBefore;
    const perSec = result.webhooks / (result.wallMs / 1000);
    console.log(`\nWebhooks: ${clients} clients, short calls back to back (voice, silence, silence, status), each webhook a store commit`);
    table(
      ['webhooks', 'per second', 'p50 ms', 'p99 ms', 'service CPU', 'failures'],
      [[String(result.webhooks), perSec.toFixed(0), fmt(quantile(result.latencyMs, 0.5)), fmt(quantile(result.latencyMs, 0.99)), `${((cpu / result.wallMs) * 100).toFixed(0)}%`, String(result.failures.length)]],
    );
    if (result.failures.length > 0) console.log(`  e.g. ${result.failures[0]}`);
    report.webhooks = { clients, webhooks: result.webhooks, perSec, latencyMs: stats(result.latencyMs), cpuPercentOfOneCore: (cpu / result.wallMs) * 100, failures: result.failures.length };
  });
}

async function storePhase() {
  const calls = num('load-calls');
  const rounds = num('store-rounds');
  // A real payload: a few calls against the service, and the largest one it stored.
  const payload = await withService(modes[0]!, async (service) => {
    const run = await runCalls({ serviceUrl: service.url, calls: 5, turns: num('turns'), playback: 0, callerSpeaksMs: 0, rampMs: 0, firstCallIndex: nextCallIndex });
    nextCallIndex += 5;
    return largestStoredCall(service.dataDir, [...new Set(run.turns.map((t) => t.callSid))]);
  });
  const timings = await measureStore(payload, { calls, rounds });
  const kb = (bytes: number) => (bytes / 1024).toFixed(1);
  console.log(
    `\nStore: the embedded SQLite store in this process, ${calls} calls × ${rounds} rounds of a turn's load, claim and answer commit ` +
      `(a real call's payload: snapshot ${kb(timings.sizes.snapshot)} KB, record ${kb(timings.sizes.record)} KB, ` +
      `remembered answers ${kb(timings.sizes.responses)} KB), µs the event loop is held`,
  );
  const row = (name: string, values: number[]) => [
    name,
    ...[0.5, 0.99, 0.999].map((q) => quantile(values, q).toFixed(0)),
    Math.max(...values).toFixed(0),
    mean(values).toFixed(0),
    String(values.filter((us) => us > 2_000).length),
  ];
  table(['', 'p50', 'p99', 'p99.9', 'max', 'mean', 'over 2 ms'], [row('load', timings.load), row('claim commit', timings.claim), row('answer commit', timings.answer)]);
  report.store = {
    calls,
    rounds,
    sizes: timings.sizes,
    ...Object.fromEntries((['load', 'claim', 'answer'] as const).map((op) => [op, { ...stats(timings[op]), mean: mean(timings[op]), over2Ms: timings[op].filter((us) => us > 2_000).length }])),
  };
}

async function coldPhase() {
  const runs = num('cold-starts');
  const result = await measureColdStart(runs, serviceEnv(modes[0]!));
  const row = (name: string, values: number[]) => [name, fmt(quantile(values, 0.5)), fmt(Math.min(...values)), fmt(Math.max(...values))];
  console.log(`\nCold start: spawn → first /healthz 200 (${runs} starts each), ms`);
  table(['', 'p50', 'min', 'max'], [
    row('node src/server.ts (npm start)', result.readyMs),
    ...(result.builtReadyMs.length > 0 ? [row('node dist/src/server.js (the image)', result.builtReadyMs)] : []),
    row('node -e "" (spawn to exit)', result.nodeMs),
  ]);
  const heaviest = [...result.imports].sort((a, b) => b.ms - a.ms).slice(0, 6);
  console.log(`  heaviest imports on the start path (own time, fresh process): ${heaviest.map((i) => `${i.module} ${fmt(i.ms)}`).join(', ')}`);
  report.cold = { readyMs: stats(result.readyMs), builtReadyMs: stats(result.builtReadyMs), nodeMs: stats(result.nodeMs), imports: result.imports };
}

// ---- the floors the fakes allow ----

function answersOf(calls: number): string[] {
  return Array.from({ length: calls * num('turns') }, (_, i) => answerFor(0, i % num('turns')));
}

function answerLengths(): string {
  const counts = Array.from({ length: Math.min(3, num('turns')) }, (_, t) => wordCount(answerFor(4_000, t)));
  return counts.join(', ');
}

/** Time for the agent to have written `words` words, then ElevenLabs to deliver the audio of `chars` characters. */
function agentThenSpeechMs(words: number, chars: number): number {
  const agent = latency.agentFirstMs + (words - 1) * wordIntervalMs(latency.tokensPerSec);
  const speech = latency.ttsFirstByteMs + (latency.ttsCharsPerSec > 0 ? (chars / latency.ttsCharsPerSec) * 1000 : 0);
  return agent + speech;
}

function wholeFloorMs(answer: string): number {
  return agentThenSpeechMs(wordCount(answer), answer.length);
}

function floorMs(turn: TurnTiming, mode: 'pieces' | 'whole'): number {
  const answer = answerFor(turn.order, turn.turn);
  if (mode === 'whole') return wholeFloorMs(answer);
  const piece = firstPieceText(answer);
  return agentThenSpeechMs(wordCount(piece), piece.length);
}

// ---- figures ----

/** A loop-delay histogram holds the time between checks: the resolution plus how late the loop ran. */
function late(ns: number): number {
  return Math.max(0, ns / 1e6 - LOOP_RESOLUTION_MS);
}

function label(mode: 'pieces' | 'whole'): string {
  return mode === 'pieces' ? 'streamed in pieces (REPLY_PIECES=sentences)' : 'whole answer, then synthesis (REPLY_PIECES=whole)';
}

function quantiles(values: number[]): string[] {
  return [fmt(quantile(values, 0.5)), fmt(quantile(values, 0.95)), fmt(quantile(values, 0.99)), fmt(Math.max(...values))];
}

function stats(values: number[]) {
  return { n: values.length, p50: quantile(values, 0.5), p95: quantile(values, 0.95), p99: quantile(values, 0.99), max: values.length ? Math.max(...values) : NaN };
}

function median(values: number[]): number {
  return quantile(values, 0.5);
}

function mean(values: number[]): number {
  return values.length ? values.reduce((a, b) => a + b, 0) / values.length : NaN;
}

function fmt(ms: number): string {
  if (!Number.isFinite(ms)) return '-';
  return Math.abs(ms) < 10 ? ms.toFixed(1) : ms.toFixed(0);
}

function mb(bytes: number): string {
  return (bytes / 2 ** 20).toFixed(0);
}

function table(header: string[], rows: string[][]) {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  console.log(line(header));
  for (const row of rows) console.log(line(row));
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

