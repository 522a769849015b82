/**
 * The speech port: turn text into audio a phone can play. Adapter: `elevenlabs.ts`.
 * When no speech service is configured, or it fails, the transport falls back to
 * the phone's own text-to-speech (`<Say>`), so this port is optional.
 */
export interface SpeechRequest {
  text: string;
  /** Text spoken just before / after, so separate pieces sound like one utterance. */
  previousText?: string;
  nextText?: string;
}

export interface SynthesisedAudio {
  /** `audio/mpeg` or `audio/wav`: types Twilio's <Play> accepts. */
  contentType: string;
  bytes: Buffer;
}

export interface Speech {
  /**
   * Resolves with the complete audio. Rejects with `SpeechError` on any non-2xx,
   * a non-audio body, a stream that ends early or a timeout: an error body is never
   * returned as audio.
   */
  synthesise(request: SpeechRequest, signal: AbortSignal): Promise<SynthesisedAudio>;
}

export class SpeechError extends Error {
  override readonly name = 'SpeechError';
  readonly status: number | undefined;
  /** ElevenLabs' `detail.status`, e.g. `too_many_concurrent_requests`, `system_busy`. */
  readonly detail: string | undefined;
  constructor(message: string, options?: { cause?: unknown; status?: number; detail?: string }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.status = options?.status;
    this.detail = options?.detail;
  }
}
