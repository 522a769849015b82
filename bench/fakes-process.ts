/**
 * The benchmark's outside world, in a process of its own so that its timers and
 * sockets never take the service's event loop: the loopback fake agent and fake
 * ElevenLabs of test/fakes, paced by the scenario's latencies.
 *
 * Started by bench/processes.ts with the latencies as its argument and an IPC
 * channel, on which it says `{ type: 'ready', agentUrl, elevenLabsUrl }`; it exits
 * when the parent goes away.
 */
import { startFakeAgent } from '../test/fakes/agent-server.ts';
import { fakeAudioFor, startFakeElevenLabs } from '../test/fakes/elevenlabs-server.ts';
import { answerForRequest, ELEVENLABS_KEY, wordIntervalMs, type FakesLatency } from './scenario.ts';

export type FakesReady = { type: 'ready'; agentUrl: string; elevenLabsUrl: string };

const latency = JSON.parse(process.argv[2] ?? 'null') as FakesLatency | null;
if (!latency) throw new Error('usage: node bench/fakes-process.ts <latency JSON>');

const agent = await startFakeAgent({
  behaviour: () => ({
    kind: 'reply',
    answer: answerForRequest,
    firstChunkDelayMs: latency.agentFirstMs,
    chunkDelayMs: wordIntervalMs(latency.tokensPerSec),
    chunkWords: 1,
  }),
});

const { outputFormat, ttsCharsPerSec, ttsFirstByteMs } = latency;
const perChar = fakeAudioFor('ab', outputFormat).length - fakeAudioFor('a', outputFormat).length;
// Chunks of 20 ms of streaming at the configured rate; one chunk holding everything when the rate is 0.
const charsPerChunk = ttsCharsPerSec > 0 ? Math.max(1, Math.round(ttsCharsPerSec / 50)) : 1_000_000;
const eleven = await startFakeElevenLabs({ apiKey: ELEVENLABS_KEY });
eleven.setBehaviour({
  kind: 'audio',
  firstByteDelayMs: ttsFirstByteMs,
  bytesPerChunk: perChar * charsPerChunk,
  chunkDelayMs: ttsCharsPerSec > 0 ? Math.round((1000 * charsPerChunk) / ttsCharsPerSec) : 0,
});

process.on('disconnect', () => {
  void Promise.all([agent.close(), eleven.close()]).finally(() => process.exit(0));
});
process.send!({ type: 'ready', agentUrl: agent.url, elevenLabsUrl: eleven.url } satisfies FakesReady);
