/**
 * The ElevenLabs adapter for the speech port: one streaming text-to-speech request
 * per piece of text, read to the end, so Twilio's <Play> gets a complete file.
 *
 * What it guards against: an error body (JSON) handed on as audio, a stream cut
 * off half-way, a busy or saturated ElevenLabs (429s that are worth one more try)
 * and a request that hangs while the caller waits. Every failure is a
 * `SpeechError`; the transport then falls back to <Say>.
 *
 * @see https://elevenlabs.io/docs/api-reference/text-to-speech/stream
 * @see https://help.elevenlabs.io/hc/en-us/articles/19571824571921-API-Error-Code-429
 * @see https://www.twilio.com/docs/voice/twiml/play#supported-audio-file-types
 */
import type { IncomingMessage } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { HttpClient, httpUrl, readBodyPrefix, type HttpAnswer } from '../http-client/http-exchange.ts';
import { SpeechError, type Speech, type SpeechRequest, type SynthesisedAudio } from './speech.ts';
import { isTimeout, LinkedAbort } from '../http-client/linked-abort.ts';

export interface ElevenLabsOptions {
  apiKey: string;
  voiceId: string;
  baseUrl?: string;
  modelId?: string;
  /**
   * `mp3_*` (played as `audio/mpeg`) or `ulaw_8000` (the phone network's own
   * encoding, wrapped here as `audio/wav`). Other formats (raw PCM, Opus) are
   * refused at construction: Twilio's <Play> cannot play them.
   */
  outputFormat?: string;
  /** The connection pool to use; the service shares one between its outside services. */
  http?: HttpClient;
  /** The whole synthesis, retries and pauses included. */
  timeoutMs?: number;
}

/**
 * What to do when ElevenLabs answers non-2xx. A retry waits the next pause in its
 * row, and only while `timeoutMs` leaves room for the pause; anything not listed
 * (401 bad key, 422 bad request, any other 4xx, unknown 429s) fails at once,
 * because asking again cannot fix it.
 *
 * | status | detail.status                  | pauses before retrying | why                                              |
 * |--------|--------------------------------|------------------------|--------------------------------------------------|
 * | 429    | `system_busy`                  | 250 ms, 500 ms         | ElevenLabs is briefly overloaded; a retry usually succeeds |
 * | 429    | `too_many_concurrent_requests` | 400, 800, 1600 ms      | the plan's concurrency is full; another call's synthesis frees a slot soon |
 * | 5xx    | any                            | 250 ms, once           | a transient fault; twice in a row is an outage   |
 */
const RETRY_POLICY: ReadonlyArray<{ matches: (status: number, detail: string | undefined) => boolean; pausesMs: readonly number[] }> = [
  { matches: (status, detail) => status === 429 && detail === 'system_busy', pausesMs: [250, 500] },
  { matches: (status, detail) => status === 429 && detail === 'too_many_concurrent_requests', pausesMs: [400, 800, 1600] },
  { matches: (status) => status >= 500, pausesMs: [250] },
];

/** Enough of an error body to parse ElevenLabs' JSON; anything longer is not theirs. */
const MAX_ERROR_BODY_CHARS = 16_384;
const MAX_MESSAGE_CHARS = 200;

export function createElevenLabsSpeech(options: ElevenLabsOptions): Speech {
  const {
    apiKey,
    voiceId,
    baseUrl = 'https://api.elevenlabs.io',
    modelId = 'eleven_flash_v2_5',
    outputFormat = 'mp3_44100_128',
    http = new HttpClient(),
    timeoutMs = 8000,
  } = options;
  const isMulaw = outputFormat === 'ulaw_8000';
  if (!isMulaw && !outputFormat.startsWith('mp3_')) {
    throw new TypeError(`ElevenLabs output format ${outputFormat} cannot be played by Twilio; use an mp3_* format or ulaw_8000`);
  }
  const url = httpUrl(
    `${baseUrl.replace(/\/+$/, '')}/v1/text-to-speech/${encodeURIComponent(voiceId)}/stream?output_format=${encodeURIComponent(outputFormat)}`,
    'the ElevenLabs URL',
  );
  // ElevenLabs' messages do not echo the key today; this keeps it that way if they ever do.
  const redact = (text: string): string => (apiKey === '' ? text : text.replaceAll(apiKey, '[redacted]'));

  async function requestAudio(request: SpeechRequest, signal: AbortSignal, stopped: () => SpeechError): Promise<SynthesisedAudio> {
    let response: HttpAnswer;
    try {
      response = await http.post(
        url,
        { 'xi-api-key': apiKey, 'content-type': 'application/json' },
        // previous_text / next_text let separately synthesised sentences keep one intonation.
        JSON.stringify({
          text: request.text,
          model_id: modelId,
          previous_text: request.previousText,
          next_text: request.nextText,
        }),
        signal,
      );
    } catch (error) {
      if (signal.aborted) throw stopped();
      throw new SpeechError('could not reach ElevenLabs', { cause: error });
    }
    const status = response.status;

    // The status is checked before any byte is taken as audio: ElevenLabs reports
    // errors as JSON bodies that must never reach the caller's ear.
    if (status < 200 || status > 299) {
      const { detail, message } = parseError(await readErrorBody(response));
      throw new SpeechError(redact(`ElevenLabs answered HTTP ${status}${describe(detail, message)}`), { status, detail });
    }
    const contentType = (response.headers['content-type'] ?? '').toLowerCase();
    if (!contentType.startsWith('audio/') && !contentType.startsWith('application/octet-stream')) {
      const { detail, message } = parseError(await readErrorBody(response));
      throw new SpeechError(
        redact(`ElevenLabs answered HTTP ${status} with ${contentType === '' ? 'no content type' : contentType} instead of audio${describe(detail, message)}`),
        { status, detail },
      );
    }
    const bytes = await readAll(response.body, signal, stopped, status);
    if (bytes.length === 0) throw new SpeechError('ElevenLabs sent an empty audio body', { status });
    return isMulaw ? { contentType: 'audio/wav', bytes: wavFromMulaw(bytes) } : { contentType: 'audio/mpeg', bytes };
  }

  return {
    async synthesise(request, callerSignal) {
      const giveUpAt = Date.now() + timeoutMs;
      using link = new LinkedAbort([callerSignal]);
      link.deadline(timeoutMs, `ElevenLabs did not deliver the audio within ${timeoutMs} ms`);
      const { signal } = link;
      // A deadline, ours or the caller's, is a timeout; anything else is the caller cancelling.
      const stopped = (): SpeechError =>
        isTimeout(signal.reason)
          ? new SpeechError(signal.reason.message)
          : new SpeechError('speech synthesis was aborted', { cause: signal.reason });
      if (signal.aborted) throw stopped();

      for (let retries = 0; ; retries += 1) {
        try {
          return await requestAudio(request, signal, stopped);
        } catch (error) {
          if (!(error instanceof SpeechError) || error.status === undefined || signal.aborted) throw error;
          const pause = RETRY_POLICY.find((row) => row.matches(error.status ?? 0, error.detail))?.pausesMs[retries];
          if (pause === undefined || Date.now() + pause >= giveUpAt) throw error;
          try {
            await sleep(pause, undefined, { signal });
          } catch {
            throw stopped();
          }
        }
      }
    },
  };
}

/**
 * Wraps raw 8 kHz μ-law bytes (ElevenLabs' `ulaw_8000`, which has no header) in a
 * WAV file Twilio's <Play> accepts. The header is 58 bytes of fixed fields, simple
 * enough to write by hand rather than add a dependency. μ-law is not PCM, so the
 * format chunk carries the 2-byte extension size and a `fact` chunk follows.
 *
 * @see https://www.mmsp.ece.mcgill.ca/Documents/AudioFormats/WAVE/WAVE.html
 */
export function wavFromMulaw(bytes: Buffer): Buffer {
  const WAVE_FORMAT_MULAW = 7;
  const sampleRate = 8000;
  const pad = bytes.length % 2; // RIFF chunks are word-aligned
  const header = Buffer.alloc(58);
  header.write('RIFF', 0, 'ascii');
  header.writeUInt32LE(50 + bytes.length + pad, 4); // everything after this field
  header.write('WAVE', 8, 'ascii');
  header.write('fmt ', 12, 'ascii');
  header.writeUInt32LE(18, 16); // fmt chunk size: 16 + cbSize field
  header.writeUInt16LE(WAVE_FORMAT_MULAW, 20);
  header.writeUInt16LE(1, 22); // channels
  header.writeUInt32LE(sampleRate, 24);
  header.writeUInt32LE(sampleRate, 28); // bytes per second: one byte per sample
  header.writeUInt16LE(1, 32); // block align
  header.writeUInt16LE(8, 34); // bits per sample
  header.writeUInt16LE(0, 36); // cbSize: no extension
  header.write('fact', 38, 'ascii');
  header.writeUInt32LE(4, 42);
  header.writeUInt32LE(bytes.length, 46); // samples per channel
  header.write('data', 50, 'ascii');
  header.writeUInt32LE(bytes.length, 54);
  return unpooledConcat([header, bytes, Buffer.alloc(pad)]);
}

/** The whole body. A body that breaks off is an error, never short audio; aborting `signal` destroys it, so a pending read ends at once. */
async function readAll(body: IncomingMessage, signal: AbortSignal, stopped: () => SpeechError, status: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  try {
    for await (const chunk of body as AsyncIterable<Buffer>) {
      if (signal.aborted) throw stopped();
      chunks.push(chunk);
    }
  } catch (error) {
    if (error instanceof SpeechError) throw error;
    if (signal.aborted) throw stopped();
    throw new SpeechError('the audio from ElevenLabs broke off before the end', { cause: error, status });
  }
  if (signal.aborted) throw stopped();
  return unpooledConcat(chunks);
}

/**
 * `Buffer.concat` for audio that is kept: `Buffer.concat` takes results under 4 KB
 * from Node's shared 8 KB pool, so a cached short reply would pin a whole slab and
 * the reply cache, which counts `bytes.length`, could hold about 8× its cap
 * (docs/hardening.md, P4). `allocUnsafeSlow` gives the audio memory of its own.
 */
export function unpooledConcat(chunks: readonly Uint8Array[]): Buffer {
  const total = chunks.reduce((sum, chunk) => sum + chunk.length, 0);
  const out = Buffer.allocUnsafeSlow(total);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.length;
  }
  return out;
}

/** An error body, as far as it is worth reading; empty if it cannot be read. */
function readErrorBody(response: HttpAnswer): Promise<string> {
  return readBodyPrefix(response.body, MAX_ERROR_BODY_CHARS);
}

/**
 * ElevenLabs' error shapes: `{"detail":{"status":"system_busy","message":"..."}}`,
 * sometimes `{"detail":"..."}`, and FastAPI's validation list for 422s,
 * `{"detail":[{"type":"...","msg":"..."}]}`.
 */
function parseError(body: string): { detail: string | undefined; message: string | undefined } {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    return { detail: undefined, message: body.trim() === '' ? undefined : body };
  }
  const detail = isRecord(parsed) ? parsed.detail : undefined;
  if (typeof detail === 'string') return { detail: shorten(detail), message: undefined };
  if (isRecord(detail)) {
    return {
      detail: typeof detail.status === 'string' ? detail.status : undefined,
      message: typeof detail.message === 'string' ? detail.message : undefined,
    };
  }
  if (Array.isArray(detail) && isRecord(detail[0])) {
    const first = detail[0];
    return {
      detail: typeof first.type === 'string' ? first.type : undefined,
      message: typeof first.msg === 'string' ? first.msg : undefined,
    };
  }
  return { detail: undefined, message: body };
}

function describe(detail: string | undefined, message: string | undefined): string {
  return `${detail === undefined ? '' : ` (${detail})`}${message === undefined ? '' : `: ${shorten(message)}`}`;
}

function shorten(text: string): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length > MAX_MESSAGE_CHARS ? `${flat.slice(0, MAX_MESSAGE_CHARS)}…` : flat;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
