/**
 * `npm run bench`: how soon a caller hears the answer, and what the service costs.
 *
 * The service runs in its own process (bench/service-entry.ts: what src/server.ts
 * runs, embedded store), the fake agent and fake ElevenLabs in another
 * (bench/fakes-process.ts), and the simulated Twilio callers in this one, so the
 * service's event loop and CPU time are its own. Each phase starts a fresh
 * service:
 *
 * - latency: `--calls` concurrent calls of `--turns` turns, audio played in real
 *   time: first audio after the caller's speech, next to the floor the fakes
 *   allow, and next to the old way (the whole answer, then its synthesis: the
 *   service started with `--reply-pieces whole`).
 * - formats: `--calls` calls (no playback) with each
 *   ELEVEN_OUTPUT_FORMAT: first audio and audio bytes a turn.
 * - load: `--load-calls` concurrent calls the same way: first audio, webhook
 *   answer times as Twilio sees them, service CPU, memory per active call.
 * - capacity: callers asking back to back, nobody listening: turns per second
 *   and CPU per turn.
 * - webhooks: cheap webhooks back to back: webhooks answered per second.
 * - cold: spawn to the first /healthz 200, of `node src/server.ts` and of the
 *   production build the image runs.
 *
 * A phase fails (exit status 1) when a call fails, a turn goes unanswered or a
 * webhook is refused: its figures would not be the service's.
 *
 *   npm run bench -- --calls 50 --turns 3 --agent-first-ms 300 --tokens-per-sec 40 --tts-first-byte-ms 150
 *   npm run bench -- --phases formats --calls 20
 *   npm run bench -- --phases load --service-node-options="--cpu-prof --cpu-prof-dir=prof"
 *
 * Another transport's phase is a function in PHASES that starts the service with
 * `withService` and returns its summary. Figures and how to read them:
 * docs/performance.md.
 */
import { writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { runCalls, runCallsFor, type CallsResult } from './calls.ts';
import { measureColdStart } from './cold-start.ts';
import { cpuMs, startFakes, startService, type Fakes, type ServiceProcess } from './processes.ts';
import { quantile } from './quantile.ts';
import { answerFor, ELEVENLABS_KEY, floorMs, wordCount, wordIntervalMs, type FakesLatency } from './scenario.ts';
import { runWebhooks } from './webhooks.ts';
import { relayPhase } from './relay.ts';

type Mode = 'pieces' | 'whole';

/** Every option, with its default (strings, as on the command line). */
const DEFAULTS = {
  calls: '50', turns: '3', 'agent-first-ms': '300', 'tokens-per-sec': '40', 'tts-first-byte-ms': '150', 'tts-chars-per-sec': '0',
  deadline: '3000', format: 'ulaw_8000', playback: '1', 'caller-speaks-ms': '1000', 'load-calls': '200',
  'capacity-callers': '200', 'capacity-seconds': '10', 'webhook-clients': '32', 'webhook-seconds': '5', 'cold-starts': '7',
  phases: 'latency,formats,load,capacity,webhooks,cold', modes: 'pieces,whole', json: '', 'service-node-options': '',
};
const { values: args } = parseArgs({ options: Object.fromEntries(Object.entries(DEFAULTS).map(([name, value]) => [name, { type: 'string', default: value }])) });
const arg = (name: keyof typeof DEFAULTS): string => String(args[name]);
const num = (name: keyof typeof DEFAULTS): number => {
  const value = Number(arg(name));
  if (!Number.isFinite(value) || value < 0) throw new Error(`--${name} must be a number, got ${arg(name)}`);
  return value;
};

const PHASES: Record<string, () => Promise<unknown>> = {
  latency: latencyPhase,
  formats: formatsPhase,
  load: loadPhase,
  capacity: capacityPhase,
  webhooks: webhookPhase,
  cold: coldPhase,
  relay: relayPhase,
};
/** The output formats the formats phase compares: the phone line's own, and two MP3s. */
const FORMATS = ['ulaw_8000', 'mp3_44100_128', 'mp3_22050_32'];
const phases = arg('phases').split(',');
for (const name of phases) if (!(name in PHASES)) throw new Error(`--phases: unknown phase ${name} (${Object.keys(PHASES).join(', ')})`);
const modes = arg('modes').split(',') as Mode[];
for (const mode of modes) if (mode !== 'pieces' && mode !== 'whole') throw new Error(`--modes: pieces or whole, got ${mode}`);
const latency: FakesLatency = {
  agentFirstMs: num('agent-first-ms'),
  tokensPerSec: num('tokens-per-sec'),
  ttsFirstByteMs: num('tts-first-byte-ms'),
  ttsCharsPerSec: num('tts-chars-per-sec'),
  outputFormat: arg('format'),
};
const report: Record<string, unknown> = { latency, args };
const failed: string[] = [];
let nextCallIndex = 0;

const fakes = await startFakes(latency);
const load = () => loadavg().map((l) => l.toFixed(2)).join(' ');
console.log(`Machine: ${cpus().length} cores, load average ${load()} at the start (other work on the machine skews every figure).`);
console.log(
  `Scenario: agent first token ${latency.agentFirstMs} ms then ${latency.tokensPerSec} tokens/s ` +
    `(one word every ${wordIntervalMs(latency.tokensPerSec).toFixed(1)} ms), ElevenLabs first byte ${latency.ttsFirstByteMs} ms` +
    `${latency.ttsCharsPerSec > 0 ? ` then ${latency.ttsCharsPerSec} chars/s` : ', whole audio at once'}, ${latency.outputFormat}, ` +
    `webhook deadline ${arg('deadline')} ms; answers of ${[0, 1, 2].map((t) => wordCount(answerFor(4_000, t))).join(', ')} words.`,
);
try {
  for (const name of phases) {
    try {
      report[name] = await PHASES[name]!();
    } catch (error) {
      failed.push(name);
      console.error(`\nPhase ${name} FAILED: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
} finally {
  await fakes.close();
}
console.log(`\nLoad average at the end: ${load()}.`);
if (arg('json')) writeFileSync(arg('json'), `${JSON.stringify(report, null, 2)}\n`);
if (failed.length > 0) {
  console.error(`FAILED: ${failed.join(', ')}`);
  process.exitCode = 1;
}

/**
 * The service's settings in every phase: the fakes, and limits set for the
 * benchmark's traffic, all of it signed (webhooks, and audio links the service
 * signed itself). Every simulated call has its own number (a call makes about
 * ten webhooks); the instance's limit on signed webhooks is lifted (it would
 * refuse bursts of the webhooks phase); the fake ElevenLabs has no plan limit, so
 * neither has the service.
 */
function serviceEnv(backends: Fakes = fakes, outputFormat = latency.outputFormat): Record<string, string> {
  return {
    KOOZIE_AGENT_URI: backends.agentUrl,
    ELEVENLABS_API_KEY: ELEVENLABS_KEY,
    ELEVEN_VOICE_ID: 'bench-voice',
    ELEVENLABS_BASE_URL: backends.elevenLabsUrl,
    ELEVEN_OUTPUT_FORMAT: outputFormat,
    ELEVENLABS_MAX_CONCURRENCY: '1000',
    WEBHOOK_DEADLINE_MS: arg('deadline'),
    RATE_LIMIT_PER_CALLER_PER_MINUTE: '300',
    RATE_LIMIT_GLOBAL_PER_SECOND: '1000000',
  };
}

async function withService<T>(mode: Mode, work: (service: ServiceProcess) => Promise<T>, env = serviceEnv()): Promise<T> {
  const service = await startService(env, {
    args: ['--reply-pieces', mode === 'whole' ? 'whole' : 'sentences'],
    nodeOptions: arg('service-node-options').split(' ').filter(Boolean),
  });
  // The fixed phrases are synthesised in the background after start; let that finish.
  await sleep(latency.ttsFirstByteMs * 2 + 500);
  try {
    return await work(service);
  } finally {
    await service.close();
  }
}

function calls(service: ServiceProcess, count: number, options: { progress?: { active: number }; outputFormat?: string; playback?: number } = {}): Promise<CallsResult> {
  const firstCallIndex = nextCallIndex;
  nextCallIndex += count;
  return runCalls({
    serviceUrl: service.url,
    calls: count,
    turns: num('turns'),
    playback: options.playback ?? num('playback'),
    callerSpeaksMs: num('caller-speaks-ms'),
    rampMs: Math.min(3_000, count * 20),
    firstCallIndex,
    outputFormat: options.outputFormat ?? latency.outputFormat,
    ...(options.progress ? { progress: options.progress } : {}),
  });
}

/** First audio of each answered turn, and the same minus its floor; throws on failed calls or unanswered turns. */
function firstAudio(result: CallsResult, mode: Mode) {
  const answered = result.turns.filter((t) => t.firstReplyAt !== undefined);
  const unanswered = result.turns.length - answered.length;
  if (result.failures.length > 0 || unanswered > 0) {
    throw new Error(`${result.failures.length} calls failed, ${unanswered} turns unanswered; e.g. ${result.failures[0] ?? '-'}`);
  }
  const first = answered.map((t) => t.firstReplyAt! - t.startedAt);
  const overFloor = answered.map((t, i) => first[i]! - floorMs(answerFor(t.order, t.turn), mode, latency));
  return { answered, first, overFloor };
}

async function latencyPhase() {
  const count = num('calls');
  const rows: string[][] = [];
  const heardRows: string[][] = [];
  const summary: Record<string, unknown> = {};
  for (const mode of modes) {
    const result = await withService(mode, (service) => calls(service, count));
    if (rows.length === 0) {
      const answers = result.turns.map((t) => answerFor(t.order, t.turn));
      rows.push(['floor: agent to first piece + TTS first byte', ...quantiles(answers.map((a) => floorMs(a, 'pieces', latency)))]);
      rows.push(['floor of the old way: whole answer + TTS first byte', ...quantiles(answers.map((a) => floorMs(a, 'whole', latency)))]);
    }
    const { answered, first, overFloor } = firstAudio(result, mode);
    rows.push([label(mode), ...quantiles(first)], ['  minus its floor', ...quantiles(overFloor)]);
    const gaps = answered.flatMap((t) => t.gaps);
    const firstSound = answered.map((t) => t.firstSoundAt! - t.startedAt);
    heardRows.push([
      label(mode),
      fmt(quantile(firstSound, 0.5)),
      mean(answered.map((t) => t.replySounds)).toFixed(1),
      String(answered.filter((t) => t.holdSounds > 0).length),
      ...[0.5, 0.99, 1].map((q) => fmt(quantile(gaps, q))),
      mean(answered.map((t) => t.audioBytes)).toFixed(0),
    ]);
    summary[mode] = { turns: answered.length, firstAudioMs: stats(first), overFloorMs: stats(overFloor), firstSoundMs: stats(firstSound), gapMs: stats(gaps) };
  }
  console.log(`\nFirst audio: /speech-result sent → first answer audio playable (${count} concurrent calls × ${num('turns')} turns), ms`);
  table(['', 'p50', 'p95', 'p99', 'max'], rows);
  const p50 = (mode: Mode) => (summary[mode] as { firstAudioMs: { p50: number } } | undefined)?.firstAudioMs.p50;
  if (p50('pieces') && p50('whole')) console.log(`Streaming pieces is ${(p50('whole')! / p50('pieces')!).toFixed(2)}x sooner at p50.`);
  console.log(`\nThe answer as heard: first sound of any kind (a hold, if the answer is late), sounds per answer, turns held, silences between sounds (ms), audio bytes per answer`);
  table(['', 'first sound p50', 'sounds', 'held', 'gap p50', 'p99', 'max', 'bytes'], heardRows);
  return summary;
}

/**
 * Each output format with the same calls, no playback. The fake ElevenLabs sends
 * 10 ms of speech per character at each format's own byte rate, so the bytes a
 * turn compare as the real formats' do; its first byte comes as soon for every
 * format, so first audio compares only the service's handling.
 */
async function formatsPhase() {
  const rows: string[][] = [];
  const summary: Record<string, unknown> = {};
  const count = num('calls');
  for (const outputFormat of FORMATS) {
    const backends = await startFakes({ ...latency, outputFormat });
    const result = await withService('pieces', (service) => calls(service, count, { outputFormat, playback: 0 }), serviceEnv(backends, outputFormat)).finally(() => backends.close());
    const { answered, first } = firstAudio(result, 'pieces');
    const kbPerTurn = mean(answered.map((t) => t.audioBytes)) / 1024;
    rows.push([outputFormat, fmt(quantile(first, 0.5)), fmt(quantile(first, 0.99)), kbPerTurn.toFixed(1)]);
    summary[outputFormat] = { firstAudioMs: stats(first), kbPerTurn };
  }
  console.log(`\nOutput format: ${count} calls × ${num('turns')} turns with each, no playback`);
  table(['ELEVEN_OUTPUT_FORMAT', 'first audio p50 ms', 'p99 ms', 'KB a turn'], rows);
  return summary;
}

async function loadPhase() {
  const count = num('load-calls');
  const mode = modes[0]!;
  return withService(mode, async (service) => {
    const idle = await service.memory();
    const progress = { active: 0 };
    // Once every call is in progress, and a few seconds into their turns: memory after a full GC.
    let active: NodeJS.MemoryUsage | undefined;
    let sampling = false;
    const sampler = setInterval(() => {
      if (sampling || progress.active < count) return;
      sampling = true;
      setTimeout(() => void service.memory().then((m) => (active = m)), 3_000);
    }, 100);
    const cpuBefore = cpuMs(service.pid);
    const result = await calls(service, count, { progress }).finally(() => clearInterval(sampler));
    const cpu = cpuMs(service.pid) - cpuBefore;
    const { first, overFloor } = firstAudio(result, mode);
    const routes = [...result.webhookMs].map(([path, ms]) => `${path} ${fmt(quantile(ms, 0.5))}/${fmt(quantile(ms, 0.99))}`);
    const cpuShare = (cpu / result.wallMs) * 100;
    console.log(`\nLoad: ${count} concurrent calls × ${num('turns')} turns, audio played in real time (${label(mode)})`);
    console.log(`  first audio p50 ${fmt(quantile(first, 0.5))} ms, p99 ${fmt(quantile(first, 0.99))} ms; minus its floor p50 ${fmt(quantile(overFloor, 0.5))}, p99 ${fmt(quantile(overFloor, 0.99))} ms`);
    console.log(`  webhook answer time as Twilio sees it, p50/p99 ms (/speech-result waits for the agent and ElevenLabs): ${routes.join(', ')}`);
    console.log(`  service CPU ${cpuShare.toFixed(0)}% of one core over ${(result.wallMs / 1000).toFixed(0)} s`);
    const heapAndBuffers = (m: NodeJS.MemoryUsage) => m.heapUsed + m.arrayBuffers;
    const perCallKb = active ? (heapAndBuffers(active) - heapAndBuffers(idle)) / count / 1024 : NaN;
    if (active) {
      console.log(
        `  memory after a full GC: heap + buffers ${mb(heapAndBuffers(idle))} MB idle, ${mb(heapAndBuffers(active))} MB with ${count} calls in progress: ` +
          `${perCallKb.toFixed(0)} KB per active call (resident ${mb(idle.rss)} → ${mb(active.rss)} MB)`,
      );
    }
    return { calls: count, firstAudioMs: stats(first), overFloorMs: stats(overFloor), webhookMs: Object.fromEntries([...result.webhookMs].map(([p, ms]) => [p, stats(ms)])), cpuPercentOfOneCore: cpuShare, memoryPerActiveCallKb: perCallKb };
  });
}

async function capacityPhase() {
  const callers = num('capacity-callers');
  const rows: string[][] = [];
  const summary: Record<string, unknown> = {};
  for (const mode of modes) {
    const { result, cpu } = await withService(mode, async (service) => {
      const cpuBefore = cpuMs(service.pid);
      const options = { serviceUrl: service.url, callers, durationMs: num('capacity-seconds') * 1000, turns: num('turns'), playback: 0, callerSpeaksMs: 0, outputFormat: latency.outputFormat };
      const result = await runCallsFor({ ...options, firstCallIndex: nextCallIndex });
      nextCallIndex += 1_000_000;
      return { result, cpu: cpuMs(service.pid) - cpuBefore };
    });
    firstAudio(result, mode); // throws on a failed call or an unanswered turn
    const turnMs = result.turns.map((t) => t.endedAt - t.startedAt);
    const perSec = result.turns.length / (result.wallMs / 1000);
    const cpuPerTurn = cpu / Math.max(1, result.turns.length);
    rows.push([label(mode), String(result.turns.length), perSec.toFixed(0), fmt(quantile(turnMs, 0.5)), fmt(quantile(turnMs, 0.99)), `${((cpu / result.wallMs) * 100).toFixed(0)}%`, cpuPerTurn.toFixed(2)]);
    summary[mode] = { callers, turns: result.turns.length, turnsPerSec: perSec, cpuMsPerTurn: cpuPerTurn, turnMs: stats(turnMs) };
  }
  console.log(`\nCapacity: ${callers} callers asking back to back for ${num('capacity-seconds')} s, nobody listening (a turn ends when the whole answer is voiced)`);
  table(['', 'turns', 'turns/s', 'turn p50 ms', 'turn p99 ms', 'service CPU', 'CPU ms/turn'], rows);
  return summary;
}

async function webhookPhase() {
  const clients = num('webhook-clients');
  const { result, cpu } = await withService(modes[0]!, async (service) => {
    const cpuBefore = cpuMs(service.pid);
    const result = await runWebhooks({ serviceUrl: service.url, clients, durationMs: num('webhook-seconds') * 1000, firstCallIndex: nextCallIndex });
    nextCallIndex += 1_000_000;
    return { result, cpu: cpuMs(service.pid) - cpuBefore };
  });
  const perSec = result.answered / (result.wallMs / 1000);
  console.log(`\nWebhooks: ${clients} clients, short calls back to back (voice, silence, silence, status), each webhook a store commit; only answers with TwiML count`);
  table(
    ['answered', 'per second', 'p50 ms', 'p99 ms', 'service CPU', 'refused (429)', 'failed'],
    [[String(result.answered), perSec.toFixed(0), fmt(quantile(result.latencyMs, 0.5)), fmt(quantile(result.latencyMs, 0.99)), `${((cpu / result.wallMs) * 100).toFixed(0)}%`, String(result.refused), String(result.failures.length)]],
  );
  if (result.refused > 0 || result.failures.length > 0) {
    throw new Error(`${result.refused} webhooks refused (429) and ${result.failures.length} failed (e.g. ${result.failures[0] ?? '-'}): the service did not take this load as configured`);
  }
  return { clients, answered: result.answered, perSec, latencyMs: stats(result.latencyMs), cpuPercentOfOneCore: (cpu / result.wallMs) * 100 };
}

async function coldPhase() {
  const runs = num('cold-starts');
  const result = await measureColdStart(runs, serviceEnv());
  const row = (name: string, values: number[]) => [name, fmt(quantile(values, 0.5)), fmt(Math.min(...values)), fmt(Math.max(...values))];
  console.log(`\nCold start: spawn → first /healthz 200 (${runs} starts each), ms`);
  table(['', 'p50', 'min', 'max'], [
    row('node src/server.ts (npm start)', result.readyMs),
    ...(result.builtReadyMs.length > 0 ? [row('node dist/src/server.js (the image)', result.builtReadyMs)] : []),
    row('node -e "" (spawn to exit)', result.nodeMs),
  ]);
  if (result.buildError) throw new Error(`the production build failed: ${result.buildError}`);
  return { readyMs: stats(result.readyMs), builtReadyMs: stats(result.builtReadyMs), nodeMs: stats(result.nodeMs) };
}

function label(mode: Mode): string {
  return mode === 'pieces' ? 'streamed in pieces' : 'whole answer, then synthesis (the old way)';
}

function quantiles(values: number[]): string[] {
  return [0.5, 0.95, 0.99, 1].map((q) => fmt(quantile(values, q)));
}

function stats(values: number[]) {
  return { n: values.length, p50: quantile(values, 0.5), p95: quantile(values, 0.95), p99: quantile(values, 0.99), max: quantile(values, 1) };
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
