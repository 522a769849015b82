/**
 * The ElevenLabs adapter for the speech port: one streaming text-to-speech request
 * per piece of text, read to the end, so Twilio's <Play> gets a complete file.
 *
 * What it guards against: an error body (JSON) handed on as audio, a stream cut
 * off half-way, a busy or saturated ElevenLabs (429s worth one more try, once)
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

/**
 * The `output_format` values Twilio's <Play> can play: ElevenLabs' MP3 formats
 * (served as `audio/mpeg`) and `ulaw_8000`, the phone network's own 8 kHz μ-law,
 * which ElevenLabs sends headerless and this adapter wraps as `audio/wav`. The
 * others in ElevenLabs' list (raw PCM, A-law, Opus) Twilio cannot play as sent.
 * `mp3_44100_192` needs ElevenLabs' Creator plan or above.
 *
 * @see elevenlabs/elevenlabs-docs fern/apis/api/openapi.json (`output_format` of POST /v1/text-to-speech/{voice_id}/stream)
 * @see https://www.twilio.com/docs/voice/twiml/play#supported-audio-file-types
 */
export const PLAYABLE_OUTPUT_FORMATS = [
  'ulaw_8000',
  'mp3_22050_32',
  'mp3_44100_32',
  'mp3_44100_64',
  'mp3_44100_96',
  'mp3_44100_128',
  'mp3_44100_192',
] as const;

/**
 * μ-law: what the phone line carries, so Twilio plays it without transcoding, in
 * half the bytes of `mp3_44100_128` (8,000 against 16,000 bytes a second); the
 * measurement behind the choice is in the README ("Audio format").
 */
export const DEFAULT_OUTPUT_FORMAT = 'ulaw_8000';

export interface ElevenLabsOptions {
  apiKey: string;
  voiceId: string;
  baseUrl?: string;
  modelId?: string;
  /** One of `PLAYABLE_OUTPUT_FORMATS`; `DEFAULT_OUTPUT_FORMAT` when absent. */
  outputFormat?: string;
  /** The connection pool to use; the service shares one between its outside services. */
  http?: HttpClient;
  /** The whole synthesis, retries and pauses included. */
  timeoutMs?: number;
}

/**
 * Which non-2xx answers are worth one more try, after `RETRY_PAUSE_MS` and only
 * while `timeoutMs` leaves room for it; anything else (401 bad key, 422 bad
 * request, any other 4xx, unknown 429s) fails at once, because asking again cannot
 * fix it. One retry, never a back-off series: a piece that fails is not lost, the
 * phone's voice says it, which beats a caller waiting in silence.
 *
 * | status | detail.status                  | why one retry                                    |
 * |--------|--------------------------------|--------------------------------------------------|
 * | 429    | `system_busy`                  | ElevenLabs is briefly overloaded ("retry the request later") |
 * | 429    | `too_many_concurrent_requests` | the plan's limit is full; this process never asks for more than its slots (voice-library.ts), so the rest is taken by other instances on the account and may free up |
 * | 5xx    | any                            | a transient fault; twice in a row is an outage   |
 *
 * @see elevenlabs/elevenlabs-docs fern/docs/pages/developer-guides/error-messages.mdx (the 429 codes)
 */
function worthOneRetry(status: number, detail: string | undefined): boolean {
  return status >= 500 || (status === 429 && (detail === 'system_busy' || detail === 'too_many_concurrent_requests'));
}
const RETRY_PAUSE_MS = 250;

/** Enough of an error body to parse ElevenLabs' JSON; anything longer is not theirs. */
const MAX_ERROR_BODY_CHARS = 16_384;
const MAX_MESSAGE_CHARS = 200;

export function createElevenLabsSpeech(options: ElevenLabsOptions): Speech {
  const {
    apiKey,
    voiceId,
    baseUrl = 'https://api.elevenlabs.io',
    modelId = 'eleven_flash_v2_5',
    outputFormat = DEFAULT_OUTPUT_FORMAT,
    http = new HttpClient(),
    timeoutMs = 8000,
  } = options;
  if (!(PLAYABLE_OUTPUT_FORMATS as readonly string[]).includes(outputFormat)) {
    throw new TypeError(`ElevenLabs output format ${outputFormat} cannot be played by Twilio; use one of ${PLAYABLE_OUTPUT_FORMATS.join(', ')}`);
  }
  const isMulaw = outputFormat === 'ulaw_8000';
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

      try {
        return await requestAudio(request, signal, stopped);
      } catch (error) {
        if (!(error instanceof SpeechError) || error.status === undefined || signal.aborted) throw error;
        if (!worthOneRetry(error.status, error.detail) || Date.now() + RETRY_PAUSE_MS >= giveUpAt) throw error;
        try {
          await sleep(RETRY_PAUSE_MS, undefined, { signal });
        } catch {
          throw stopped();
        }
      }
      // Awaited here, so the deadline stays armed (`using` lets it go when this returns).
      return await requestAudio(request, signal, stopped);
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
