/**
 * A fake ElevenLabs: a real HTTP server on 127.0.0.1 serving
 * `POST /v1/text-to-speech/:voice_id/stream` with deterministic fake audio, and
 * ElevenLabs' failure modes on request (JSON error bodies, 429s, hangs, cut-off
 * streams), so the speech adapter is exercised over real sockets, never through mocks.
 *
 * With a concurrency limit it behaves as a plan does: a request that arrives while
 * that many are being answered gets `429 {"detail":{"status":"too_many_concurrent_requests",...}}`,
 * and every answer carries the `current-concurrent-requests` and
 * `maximum-concurrent-requests` headers.
 *
 * @see ../../src/speech/elevenlabs.ts
 * @see https://elevenlabs.io/docs/api-reference/text-to-speech/stream
 * @see elevenlabs/elevenlabs-docs fern/docs/pages/models.mdx ("Concurrency and priority": the limit, the headers)
 * @see elevenlabs/elevenlabs-docs fern/docs/pages/developer-guides/error-messages.mdx (the 429 codes)
 */
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import { setTimeout as delay } from 'node:timers/promises';
import { readBody, startLoopbackServer } from './loopback-server.ts';

export interface FakeElevenLabsRequest {
  method: string;
  /** Without the query, e.g. `/v1/text-to-speech/voice-1/stream`. */
  path: string;
  query: Record<string, string>;
  headers: IncomingHttpHeaders;
  /** The parsed JSON body (`text`, `model_id`, `previous_text`, `next_text`); undefined if not JSON. */
  body: { text?: string; model_id?: string; previous_text?: string; next_text?: string } | undefined;
  /** The status it was answered with, once answered (never, for a request told to hang). */
  status?: number;
}

export type FakeElevenLabsStep =
  /** Fake audio for the text: `audio/mpeg`, or raw μ-law as `application/octet-stream` for `ulaw_8000`. */
  | { kind: 'audio'; firstByteDelayMs?: number; bytesPerChunk?: number; chunkDelayMs?: number }
  /** ElevenLabs' JSON error: `{"detail":{"status": detail, "message": "..."}}`. */
  | { kind: 'status'; status: number; detail?: string }
  /** Any status, content type and body, e.g. a JSON error sent with 200, or an empty audio body. */
  | { kind: 'raw'; status?: number; contentType: string; body: string }
  /** Reads the request and never answers. */
  | { kind: 'hang' }
  /** Sends the headers and part of the audio, then destroys the socket. */
  | { kind: 'truncated' };

/** A sequence answers request n with step n; the last step repeats. */
export type FakeElevenLabsBehaviour = FakeElevenLabsStep | { kind: 'sequence'; steps: FakeElevenLabsStep[] };

export interface FakeElevenLabs {
  /** Base URL, in place of https://api.elevenlabs.io. */
  url: string;
  requests: FakeElevenLabsRequest[];
  /** Replaces the behaviour and restarts any sequence. */
  setBehaviour(behaviour: FakeElevenLabsBehaviour): void;
  /** Requests answered at once, at most; past it, 429 `too_many_concurrent_requests`. Undefined: no limit. */
  setConcurrencyLimit(limit: number | undefined): void;
  /** The most requests that were open at once (refused ones included), since the start or the last call. */
  takePeakConcurrent(): number;
  /** Stops listening and destroys open connections, hanging ones included. */
  close(): Promise<void>;
}

const MP3_FRAME_SYNC = [0xff, 0xfb, 0x90, 0x64];
/** Each character of text stands for 10 ms of speech. */
const SPEECH_MS_PER_CHAR = 10;

/**
 * Bytes a second of an ElevenLabs output format, from its name
 * (`codec_samplerate[_kbps]`): μ-law and A-law one byte a sample, PCM two, MP3
 * and Opus their bit rate.
 */
export function bytesPerSecond(outputFormat: string): number {
  const [codec, rate, kbps] = outputFormat.split('_');
  if (codec === 'ulaw' || codec === 'alaw') return Number(rate);
  if (codec === 'pcm') return Number(rate) * 2;
  if ((codec === 'mp3' || codec === 'opus') && kbps) return (Number(kbps) * 1000) / 8;
  throw new Error(`unknown output format ${outputFormat}`);
}

/**
 * The fake's audio for a text: an MP3 frame header followed by bytes derived from
 * the text, or headerless μ-law bytes; 10 ms of speech per character, at the
 * format's own byte rate, so formats compare by size as the real ones do.
 */
export function fakeAudioFor(text: string, outputFormat = 'mp3_44100_128'): Buffer {
  const source = Buffer.from(text, 'utf8');
  const mulaw = outputFormat.startsWith('ulaw_');
  const perChar = (bytesPerSecond(outputFormat) * SPEECH_MS_PER_CHAR) / 1000;
  const prefix = mulaw ? [] : MP3_FRAME_SYNC;
  const audio = Buffer.alloc(prefix.length + source.length * perChar);
  Buffer.from(prefix).copy(audio);
  for (let i = 0; i < source.length * perChar; i += 1) {
    audio[prefix.length + i] = ((source[Math.floor(i / perChar)] ?? 0) + i * 31) & 0xff;
  }
  return audio;
}

export async function startFakeElevenLabs(
  options: { apiKey?: string; behaviour?: FakeElevenLabsBehaviour; concurrencyLimit?: number } = {},
): Promise<FakeElevenLabs> {
  let behaviour: FakeElevenLabsBehaviour = options.behaviour ?? { kind: 'audio' };
  let sequenceIndex = 0;
  let concurrencyLimit = options.concurrencyLimit;
  /** Requests open now, and those of them being answered (not refused for concurrency). */
  let open = 0;
  let answering = 0;
  let peakConcurrent = 0;
  const requests: FakeElevenLabsRequest[] = [];

  function nextStep(): FakeElevenLabsStep {
    if (behaviour.kind !== 'sequence') return behaviour;
    const { steps } = behaviour;
    const step = steps[Math.min(sequenceIndex, steps.length - 1)] ?? { kind: 'audio' };
    sequenceIndex += 1;
    return step;
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    open += 1;
    peakConcurrent = Math.max(peakConcurrent, open);
    const refused = concurrencyLimit !== undefined && answering >= concurrencyLimit;
    if (!refused) answering += 1;
    res.on('close', () => {
      open -= 1;
      if (!refused) answering -= 1;
    });
    const url = new URL(req.url ?? '/', 'http://fake');
    const raw = await readBody(req);
    let body: FakeElevenLabsRequest['body'];
    try {
      body = JSON.parse(raw) as FakeElevenLabsRequest['body'];
    } catch {
      body = undefined;
    }
    const request: FakeElevenLabsRequest = {
      method: req.method ?? '',
      path: url.pathname,
      query: Object.fromEntries(url.searchParams),
      headers: req.headers,
      body,
    };
    requests.push(request);
    /** Starts the answer: its status noted, with the concurrency headers a plan's answers carry. */
    const head = (status: number, contentType: string): ServerResponse => {
      request.status = status;
      const headers: Record<string, string> = { 'content-type': contentType };
      if (concurrencyLimit !== undefined) {
        headers['current-concurrent-requests'] = String(answering);
        headers['maximum-concurrent-requests'] = String(concurrencyLimit);
      }
      return res.writeHead(status, headers);
    };
    /** ElevenLabs' error body shape. */
    const fail = (status: number, detail: string, message: string): void => {
      head(status, 'application/json').end(JSON.stringify({ detail: { status: detail, message } }));
    };

    if (req.method !== 'POST' || !/^\/v1\/text-to-speech\/[^/]+\/stream$/.test(url.pathname)) {
      fail(404, 'not_found', 'Not found');
      return;
    }
    if (options.apiKey !== undefined && req.headers['xi-api-key'] !== options.apiKey) {
      fail(401, 'invalid_api_key', 'Invalid API key');
      return;
    }
    if (typeof body?.text !== 'string') {
      fail(422, 'invalid_request', 'text is required');
      return;
    }
    if (refused) {
      fail(429, 'too_many_concurrent_requests', `Too many concurrent requests: your plan allows ${concurrencyLimit}.`);
      return;
    }
    const outputFormat = url.searchParams.get('output_format') ?? 'mp3_44100_128';
    const audio = fakeAudioFor(body.text, outputFormat);
    const audioType = outputFormat.startsWith('ulaw_') ? 'application/octet-stream' : 'audio/mpeg';
    const step = nextStep();

    switch (step.kind) {
      case 'audio': {
        if (step.firstByteDelayMs) await delay(step.firstByteDelayMs);
        if (res.destroyed) return;
        head(200, audioType);
        const size = step.bytesPerChunk ?? 1024;
        for (let start = 0; start < audio.length; start += size) {
          if (start > 0 && step.chunkDelayMs) await delay(step.chunkDelayMs);
          if (res.destroyed) return;
          res.write(audio.subarray(start, start + size));
        }
        res.end();
        return;
      }
      case 'status':
        fail(step.status, step.detail ?? 'fake_error', `fake ElevenLabs error ${step.status}`);
        return;
      case 'raw':
        head(step.status ?? 200, step.contentType).end(step.body);
        return;
      case 'hang':
        return;
      case 'truncated':
        head(200, audioType);
        res.write(audio.subarray(0, Math.ceil(audio.length / 2)));
        // Let the bytes reach the client before the connection dies without a final chunk.
        await delay(30);
        res.socket?.destroy();
        return;
    }
  }

  const server = await startLoopbackServer(handle);

  return {
    url: server.url,
    requests,
    setBehaviour(next) {
      behaviour = next;
      sequenceIndex = 0;
    },
    setConcurrencyLimit(limit) {
      concurrencyLimit = limit;
    },
    takePeakConcurrent() {
      const peak = peakConcurrent;
      peakConcurrent = open;
      return peak;
    },
    close: () => server.close(),
  };
}

