import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createElevenLabsSpeech, wavFromMulaw, type ElevenLabsOptions } from '../../src/speech/elevenlabs.ts';
import { SpeechError, type SynthesisedAudio } from '../../src/speech/speech.ts';
import { fakeAudioFor, startFakeElevenLabs, type FakeElevenLabs } from '../fakes/elevenlabs-server.ts';

const API_KEY = 'sk_test_0123456789abcdef';
const text = 'We open at nine.';

let elevenLabs: FakeElevenLabs;

beforeEach(async () => {
  elevenLabs = await startFakeElevenLabs({ apiKey: API_KEY });
});
afterEach(async () => {
  await elevenLabs.close();
});

function speech(options: Partial<ElevenLabsOptions> = {}) {
  return createElevenLabsSpeech({ apiKey: API_KEY, voiceId: 'voice 1', baseUrl: elevenLabs.url, timeoutMs: 2000, outputFormat: 'mp3_44100_128', ...options });
}

async function failureOf(audio: Promise<SynthesisedAudio>): Promise<SpeechError> {
  const error: unknown = await audio.then(
    (result) => {
      throw new Error(`expected a SpeechError, got ${result.contentType} audio of ${result.bytes.length} bytes`);
    },
    (rejection: unknown) => rejection,
  );
  expect(error).toBeInstanceOf(SpeechError);
  expect((error as SpeechError).message).not.toContain(API_KEY);
  return error as SpeechError;
}

/** The fields of a WAV header this project relies on. */
function parseWav(wav: Buffer) {
  expect(wav.toString('ascii', 0, 4)).toBe('RIFF');
  expect(wav.readUInt32LE(4)).toBe(wav.length - 8);
  expect(wav.toString('ascii', 8, 12)).toBe('WAVE');
  const chunks = new Map<string, Buffer>();
  for (let offset = 12; offset + 8 <= wav.length; ) {
    const id = wav.toString('ascii', offset, offset + 4);
    const size = wav.readUInt32LE(offset + 4);
    chunks.set(id, wav.subarray(offset + 8, offset + 8 + size));
    offset += 8 + size + (size % 2);
  }
  const fmt = chunks.get('fmt ');
  if (fmt === undefined) throw new Error('no fmt chunk');
  return {
    format: fmt.readUInt16LE(0),
    channels: fmt.readUInt16LE(2),
    sampleRate: fmt.readUInt32LE(4),
    byteRate: fmt.readUInt32LE(8),
    blockAlign: fmt.readUInt16LE(12),
    bitsPerSample: fmt.readUInt16LE(14),
    factSamples: chunks.get('fact')?.readUInt32LE(0),
    data: chunks.get('data'),
  };
}

describe('ElevenLabs speech', () => {
  it('refuses, when it is made, a base URL it cannot post to', () => {
    expect(() => speech({ baseUrl: 'ws://api.elevenlabs.example' })).toThrow('the ElevenLabs URL must be http or https, not ws:');
  });

  it('sends the key, voice, model, output format and surrounding text, and returns the MP3', async () => {
    const audio = await speech().synthesise({ text, previousText: 'Thanks for calling.', nextText: 'See you soon.' }, AbortSignal.timeout(5000));
    expect(audio).toEqual({ contentType: 'audio/mpeg', bytes: fakeAudioFor(text) });
    expect(elevenLabs.requests).toHaveLength(1);
    const [sent] = elevenLabs.requests;
    expect(sent?.method).toBe('POST');
    expect(sent?.path).toBe('/v1/text-to-speech/voice%201/stream');
    expect(sent?.query).toEqual({ output_format: 'mp3_44100_128' });
    expect(sent?.headers['xi-api-key']).toBe(API_KEY);
    expect(sent?.headers['content-type']).toBe('application/json');
    expect(sent?.body).toEqual({
      text,
      model_id: 'eleven_flash_v2_5',
      previous_text: 'Thanks for calling.',
      next_text: 'See you soon.',
    });
  });

  it('reads audio that arrives in many small chunks to the end', async () => {
    elevenLabs.setBehaviour({ kind: 'audio', firstByteDelayMs: 20, bytesPerChunk: 50, chunkDelayMs: 2 });
    const audio = await speech().synthesise({ text }, AbortSignal.timeout(5000));
    expect(audio.bytes).toEqual(fakeAudioFor(text));
  });

  it('gives short audio memory of its own, so the reply cache holds what it counts', async () => {
    // A buffer cut from Node's shared 8 KB pool would keep the whole slab alive (P4).
    elevenLabs.setBehaviour({ kind: 'audio', bytesPerChunk: 100 });
    const audio = await speech().synthesise({ text: 'Yes.' }, AbortSignal.timeout(5000));
    expect(audio.bytes.length).toBeLessThan(4096);
    expect(audio.bytes.buffer.byteLength).toBe(audio.bytes.length);
  });

  it('does not retry a wrong API key (401)', async () => {
    const error = await failureOf(speech({ apiKey: 'sk_wrong_key' }).synthesise({ text }, AbortSignal.timeout(5000)));
    expect(error.status).toBe(401);
    expect(error.detail).toBe('invalid_api_key');
    expect(error.message).not.toContain('sk_wrong_key');
    expect(elevenLabs.requests).toHaveLength(1);
  });

  it('does not retry a rejected request (422)', async () => {
    elevenLabs.setBehaviour({ kind: 'status', status: 422, detail: 'invalid_voice_settings' });
    const error = await failureOf(speech().synthesise({ text }, AbortSignal.timeout(5000)));
    expect(error.status).toBe(422);
    expect(error.detail).toBe('invalid_voice_settings');
    expect(elevenLabs.requests).toHaveLength(1);
  });

  it('retries after a short pause when ElevenLabs is busy (429 system_busy)', async () => {
    elevenLabs.setBehaviour({ kind: 'sequence', steps: [{ kind: 'status', status: 429, detail: 'system_busy' }, { kind: 'audio' }] });
    const audio = await speech().synthesise({ text }, AbortSignal.timeout(5000));
    expect(audio.bytes).toEqual(fakeAudioFor(text));
    expect(elevenLabs.requests).toHaveLength(2);
  });

  it('waits and retries when the plan concurrency is full (429 too_many_concurrent_requests)', async () => {
    elevenLabs.setBehaviour({
      kind: 'sequence',
      steps: [{ kind: 'status', status: 429, detail: 'too_many_concurrent_requests' }, { kind: 'audio' }],
    });
    const audio = await speech().synthesise({ text }, AbortSignal.timeout(5000));
    expect(audio.contentType).toBe('audio/mpeg');
    expect(elevenLabs.requests).toHaveLength(2);
  });

  it.each(['too_many_concurrent_requests', 'system_busy'])('retries a 429 %s once, briefly, then fails: no series of back-offs while a caller waits', async (detail) => {
    elevenLabs.setBehaviour({ kind: 'status', status: 429, detail });
    const error = await failureOf(speech({ timeoutMs: 5000 }).synthesise({ text }, AbortSignal.timeout(5000)));
    expect(error.status).toBe(429);
    expect(error.detail).toBe(detail);
    expect(elevenLabs.requests).toHaveLength(2);
  });

  it('does not retry a full plan when the timeout leaves no room for the pause', async () => {
    elevenLabs.setBehaviour({ kind: 'status', status: 429, detail: 'too_many_concurrent_requests' });
    const error = await failureOf(speech({ timeoutMs: 200 }).synthesise({ text }, AbortSignal.timeout(5000)));
    expect(error.detail).toBe('too_many_concurrent_requests');
    expect(elevenLabs.requests).toHaveLength(1);
  });

  it('retries a server error once, then fails with its status', async () => {
    elevenLabs.setBehaviour({ kind: 'status', status: 500, detail: 'internal_error' });
    const error = await failureOf(speech().synthesise({ text }, AbortSignal.timeout(5000)));
    expect(error.status).toBe(500);
    expect(elevenLabs.requests).toHaveLength(2);
  });

  it('reads a plain-string detail', async () => {
    elevenLabs.setBehaviour({ kind: 'raw', status: 404, contentType: 'application/json', body: '{"detail":"Voice not found"}' });
    const error = await failureOf(speech().synthesise({ text }, AbortSignal.timeout(5000)));
    expect(error.status).toBe(404);
    expect(error.detail).toBe('Voice not found');
  });

  it('times out when ElevenLabs never answers', async () => {
    elevenLabs.setBehaviour({ kind: 'hang' });
    const started = Date.now();
    const error = await failureOf(speech({ timeoutMs: 300 }).synthesise({ text }, AbortSignal.timeout(5000)));
    expect(error.message).toContain('within 300 ms');
    expect(Date.now() - started).toBeLessThan(600);
  });

  it('times out when the audio stalls half-way', async () => {
    elevenLabs.setBehaviour({ kind: 'audio', bytesPerChunk: 40, chunkDelayMs: 1000 });
    const started = Date.now();
    const error = await failureOf(speech({ timeoutMs: 300 }).synthesise({ text }, AbortSignal.timeout(5000)));
    expect(error.message).toContain('within 300 ms');
    expect(Date.now() - started).toBeLessThan(600);
  });

  it('fails rather than return short audio when the stream is cut off', async () => {
    elevenLabs.setBehaviour({ kind: 'truncated' });
    const error = await failureOf(speech().synthesise({ text }, AbortSignal.timeout(5000)));
    expect(error.message).toContain('broke off');
    expect(elevenLabs.requests).toHaveLength(1);
  });

  it('never returns a JSON body as audio, even with status 200', async () => {
    elevenLabs.setBehaviour({
      kind: 'raw',
      contentType: 'application/json',
      body: '{"detail":{"status":"quota_exceeded","message":"You have no credits left"}}',
    });
    const error = await failureOf(speech().synthesise({ text }, AbortSignal.timeout(5000)));
    expect(error.status).toBe(200);
    expect(error.detail).toBe('quota_exceeded');
    expect(error.message).toContain('application/json instead of audio');
  });

  it('fails on an empty audio body', async () => {
    elevenLabs.setBehaviour({ kind: 'raw', contentType: 'audio/mpeg', body: '' });
    const error = await failureOf(speech().synthesise({ text }, AbortSignal.timeout(5000)));
    expect(error.message).toContain('empty');
  });

  it("stops when the caller's signal fires", async () => {
    elevenLabs.setBehaviour({ kind: 'hang' });
    const started = Date.now();
    const error = await failureOf(speech().synthesise({ text }, AbortSignal.timeout(100)));
    expect(error.message).toContain('aborted');
    expect(Date.now() - started).toBeLessThan(500);
  });

  it('wraps ulaw_8000 audio in a WAV file: μ-law, 8000 Hz, mono', async () => {
    const audio = await speech({ outputFormat: 'ulaw_8000' }).synthesise({ text }, AbortSignal.timeout(5000));
    expect(elevenLabs.requests[0]?.query).toEqual({ output_format: 'ulaw_8000' });
    expect(audio.contentType).toBe('audio/wav');
    const mulaw = fakeAudioFor(text, 'ulaw_8000');
    const wav = parseWav(audio.bytes);
    expect(wav).toMatchObject({ format: 7, channels: 1, sampleRate: 8000, byteRate: 8000, blockAlign: 1, bitsPerSample: 8 });
    expect(wav.factSamples).toBe(mulaw.length);
    expect(wav.data).toEqual(mulaw);
  });

  it('asks for ulaw_8000 unless told otherwise, and hands it on as WAV', async () => {
    const audio = await createElevenLabsSpeech({ apiKey: API_KEY, voiceId: 'voice-1', baseUrl: elevenLabs.url }).synthesise({ text }, AbortSignal.timeout(5000));
    expect(elevenLabs.requests[0]?.query).toEqual({ output_format: 'ulaw_8000' });
    expect(audio.contentType).toBe('audio/wav');
  });

  it('refuses an output format Twilio cannot play', () => {
    expect(() => speech({ outputFormat: 'pcm_16000' })).toThrow(TypeError);
  });
});

describe('wavFromMulaw', () => {
  it('pads an odd number of samples to keep RIFF chunks word-aligned', () => {
    const wav = wavFromMulaw(Buffer.from([0xff, 0x7f, 0x00]));
    expect(wav.length).toBe(58 + 4);
    const parsed = parseWav(wav);
    expect(parsed.data).toEqual(Buffer.from([0xff, 0x7f, 0x00]));
    expect(parsed.factSamples).toBe(3);
  });
});
