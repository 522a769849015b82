/**
 * The benchmark's outside world, in a process of its own so that its timers and
 * sockets never steal the service's event loop: the loopback fake agent and fake
 * ElevenLabs from test/fakes, configured with the scenario's latencies, plus a log
 * of when each of their requests arrived, wrote and finished.
 *
 * The log comes from Node's HTTP diagnostics channels, so the fakes themselves are
 * used unchanged. Times are `process.hrtime` (CLOCK_MONOTONIC), which every process
 * on the machine shares, so the benchmark can lay them next to its own.
 *
 * Started by bench/run.ts with an IPC channel:
 *   parent → { type: 'configure', latency }   new latencies for the next requests
 *   parent → { type: 'drain' }                the log so far (and forget it)
 *   child  → { type: 'ready', agentUrl, elevenLabsUrl } | { type: 'log', requests }
 * It exits when the parent goes away.
 *
 * @see https://nodejs.org/api/diagnostics_channel.html#http
 */
import { subscribe } from 'node:diagnostics_channel';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { startFakeAgent } from '../test/fakes/agent-server.ts';
import { fakeAudioFor, startFakeElevenLabs } from '../test/fakes/elevenlabs-server.ts';
import { answerForRequest, ELEVENLABS_KEY, wordIntervalMs } from './scenario.ts';

export interface FakesLatency {
  /** Time to the agent's first token. */
  agentFirstMs: number;
  tokensPerSec: number;
  /** ElevenLabs' time to first byte. */
  ttsFirstByteMs: number;
  /** How fast ElevenLabs streams audio after the first byte, in characters of text per second; 0: all at once. */
  ttsCharsPerSec: number;
  /** The output format the service asks for (the fake's audio size per character depends on it). */
  outputFormat: string;
}

export interface FakeRequestLog {
  kind: 'agent' | 'tts';
  arrivedAt: number;
  /** The service's end of the connection: its requests are matched to the service's own log by it. */
  remotePort?: number;
  /** Response finished (last byte handed to the socket). */
  endedAt?: number;
  /** Agent: each `text` chunk and when it was written. TTS: when the first audio byte was written. */
  chunks: Array<{ at: number; text: string }>;
  firstByteAt?: number;
  callSid?: string;
  message?: string;
  historyLength?: number;
  text?: string;
  previousText?: string;
  nextText?: string;
}

export type FakesMessage = { type: 'configure'; latency: FakesLatency } | { type: 'drain' };
export type FakesReply =
  | { type: 'ready'; agentUrl: string; elevenLabsUrl: string }
  /** The log, and how late the fakes' own event loop ran since the last drain (their lateness counts against the service). */
  | { type: 'log'; requests: FakeRequestLog[]; loopDelayMs: { p99: number; max: number } };

const clock = (): number => Number(process.hrtime.bigint()) / 1e6;

let latency: FakesLatency = JSON.parse(process.argv[2] ?? 'null') as FakesLatency;
if (!latency) throw new Error('usage: node bench/fakes-process.ts <latency JSON>');

const log: FakeRequestLog[] = [];
const LOOP_RESOLUTION_MS = 5;
const loopDelay = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS });
loopDelay.enable();
const late = (ns: number): number => Math.max(0, ns / 1e6 - LOOP_RESOLUTION_MS);
const open = new WeakMap<IncomingMessage, { entry: FakeRequestLog; body: Buffer[] }>();

subscribe('http.server.request.start', (message) => {
  const { request, response } = message as { request: IncomingMessage; response: ServerResponse };
  const kind = request.url?.startsWith('/chat') ? 'agent' : 'tts';
  const entry: FakeRequestLog = { kind, arrivedAt: clock(), chunks: [] };
  if (request.socket.remotePort !== undefined) entry.remotePort = request.socket.remotePort;
  const state = { entry, body: [] as Buffer[] };
  open.set(request, state);
  log.push(entry);
  // Tee the request body as the parser pushes it; the fake reads the stream as usual.
  const push = request.push.bind(request);
  request.push = (chunk: unknown, encoding?: BufferEncoding) => {
    if (chunk !== null && chunk !== undefined) state.body.push(Buffer.from(chunk as Buffer));
    else describeBody(state.entry, Buffer.concat(state.body));
    return push(chunk, encoding);
  };
  const write = response.write.bind(response) as (...args: unknown[]) => boolean;
  response.write = ((chunk: unknown, ...rest: unknown[]) => {
    const at = clock();
    if (kind === 'tts') entry.firstByteAt ??= at;
    else for (const text of sseTexts(chunk)) entry.chunks.push({ at, text });
    return write(chunk, ...rest);
  }) as typeof response.write;
});

subscribe('http.server.response.finish', (message) => {
  const { request } = message as { request: IncomingMessage };
  const state = open.get(request);
  if (state) state.entry.endedAt = clock();
});

function describeBody(entry: FakeRequestLog, raw: Buffer) {
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(raw.toString('utf8')) as Record<string, unknown>;
  } catch {
    return;
  }
  if (entry.kind === 'agent') {
    if (typeof body.callSid === 'string') entry.callSid = body.callSid;
    if (typeof body.message === 'string') entry.message = body.message;
    if (Array.isArray(body.history)) entry.historyLength = body.history.length;
  } else {
    if (typeof body.text === 'string') entry.text = body.text;
    if (typeof body.previous_text === 'string') entry.previousText = body.previous_text;
    if (typeof body.next_text === 'string') entry.nextText = body.next_text;
  }
}

function sseTexts(chunk: unknown): string[] {
  const text = typeof chunk === 'string' ? chunk : Buffer.isBuffer(chunk) ? chunk.toString('utf8') : '';
  const texts: string[] = [];
  for (const match of text.matchAll(/^data: (.*)$/gm)) {
    try {
      const parsed = JSON.parse(match[1]!) as { text?: unknown };
      if (typeof parsed.text === 'string') texts.push(parsed.text);
    } catch {
      // not a text event
    }
  }
  return texts;
}

const agent = await startFakeAgent({
  behaviour: () => ({
    kind: 'reply',
    answer: answerForRequest,
    firstChunkDelayMs: latency.agentFirstMs,
    chunkDelayMs: wordIntervalMs(latency.tokensPerSec),
    chunkWords: 1,
  }),
});

const eleven = await startFakeElevenLabs({ apiKey: ELEVENLABS_KEY });
configureElevenLabs();

function configureElevenLabs() {
  const perChar = fakeAudioFor('ab', latency.outputFormat).length - fakeAudioFor('a', latency.outputFormat).length;
  // Chunks of 20 ms of streaming at the configured rate; one chunk holding everything when the rate is 0.
  const charsPerChunk = latency.ttsCharsPerSec > 0 ? Math.max(1, Math.round(latency.ttsCharsPerSec / 50)) : 1_000_000;
  eleven.setBehaviour({
    kind: 'audio',
    firstByteDelayMs: latency.ttsFirstByteMs,
    bytesPerChunk: perChar * charsPerChunk,
    chunkDelayMs: latency.ttsCharsPerSec > 0 ? Math.round((1000 * charsPerChunk) / latency.ttsCharsPerSec) : 0,
  });
}

process.on('message', (message: FakesMessage) => {
  if (message.type === 'configure') {
    latency = message.latency;
    configureElevenLabs();
  } else if (message.type === 'drain') {
    const requests = log.splice(0);
    const loopDelayMs = { p99: late(loopDelay.percentile(99)), max: late(loopDelay.max) };
    loopDelay.reset();
    process.send!({ type: 'log', requests, loopDelayMs } satisfies FakesReply);
  }
});
process.on('disconnect', () => {
  void Promise.all([agent.close(), eleven.close()]).finally(() => process.exit(0));
});
process.send!({ type: 'ready', agentUrl: agent.url, elevenLabsUrl: eleven.url } satisfies FakesReply);
