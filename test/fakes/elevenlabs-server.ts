/**
 * A fake ElevenLabs: a real HTTP server on 127.0.0.1 serving
 * `POST /v1/text-to-speech/:voice_id/stream` with deterministic fake audio, and
 * ElevenLabs' failure modes on request (JSON error bodies, 429s, hangs, cut-off
 * streams), so the speech adapter is exercised over real sockets, never through mocks.
 *
 * @see ../../src/speech/elevenlabs.ts
 * @see https://elevenlabs.io/docs/api-reference/text-to-speech/stream
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
  /** Stops listening and destroys open connections, hanging ones included. */
  close(): Promise<void>;
}

const MP3_FRAME_SYNC = [0xff, 0xfb, 0x90, 0x64];
const MP3_BYTES_PER_CHAR = 16;
/** 10 ms of 8 kHz audio per character of text. */
const MULAW_BYTES_PER_CHAR = 80;

/**
 * The fake's audio for a text: an MP3 frame header followed by bytes derived from
 * the text, or headerless μ-law bytes; length proportional to the text.
 */
export function fakeAudioFor(text: string, outputFormat = 'mp3_44100_128'): Buffer {
  const source = Buffer.from(text, 'utf8');
  const mulaw = outputFormat.startsWith('ulaw_');
  const perChar = mulaw ? MULAW_BYTES_PER_CHAR : MP3_BYTES_PER_CHAR;
  const prefix = mulaw ? [] : MP3_FRAME_SYNC;
  const audio = Buffer.alloc(prefix.length + source.length * perChar);
  Buffer.from(prefix).copy(audio);
  for (let i = 0; i < source.length * perChar; i += 1) {
    audio[prefix.length + i] = ((source[Math.floor(i / perChar)] ?? 0) + i * 31) & 0xff;
  }
  return audio;
}

export async function startFakeElevenLabs(
  options: { apiKey?: string; behaviour?: FakeElevenLabsBehaviour } = {},
): Promise<FakeElevenLabs> {
  let behaviour: FakeElevenLabsBehaviour = options.behaviour ?? { kind: 'audio' };
  let sequenceIndex = 0;
  const requests: FakeElevenLabsRequest[] = [];

  function nextStep(): FakeElevenLabsStep {
    if (behaviour.kind !== 'sequence') return behaviour;
    const { steps } = behaviour;
    const step = steps[Math.min(sequenceIndex, steps.length - 1)] ?? { kind: 'audio' };
    sequenceIndex += 1;
    return step;
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://fake');
    const raw = await readBody(req);
    let body: FakeElevenLabsRequest['body'];
    try {
      body = JSON.parse(raw) as FakeElevenLabsRequest['body'];
    } catch {
      body = undefined;
    }
    requests.push({
      method: req.method ?? '',
      path: url.pathname,
      query: Object.fromEntries(url.searchParams),
      headers: req.headers,
      body,
    });

    if (req.method !== 'POST' || !/^\/v1\/text-to-speech\/[^/]+\/stream$/.test(url.pathname)) {
      sendError(res, 404, 'not_found', 'Not found');
      return;
    }
    if (options.apiKey !== undefined && req.headers['xi-api-key'] !== options.apiKey) {
      sendError(res, 401, 'invalid_api_key', 'Invalid API key');
      return;
    }
    if (typeof body?.text !== 'string') {
      sendError(res, 422, 'invalid_request', 'text is required');
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
        res.writeHead(200, { 'content-type': audioType });
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
        sendError(res, step.status, step.detail ?? 'fake_error', `fake ElevenLabs error ${step.status}`);
        return;
      case 'raw':
        res.writeHead(step.status ?? 200, { 'content-type': step.contentType }).end(step.body);
        return;
      case 'hang':
        return;
      case 'truncated':
        res.writeHead(200, { 'content-type': audioType });
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
    close: () => server.close(),
  };
}

/** ElevenLabs' error body shape. */
function sendError(res: ServerResponse, status: number, detail: string, message: string): void {
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify({ detail: { status: detail, message } }));
}
