/**
 * The voice library's one set of synthesis slots, against a fake ElevenLabs that
 * enforces a plan's concurrency limit: how many requests it receives at once, in
 * what order, and when a piece is given up to the phone's voice.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PHRASES } from '../../machines/call.machine.ts';
import { createElevenLabsSpeech } from '../../src/speech/elevenlabs.ts';
import { SpeechError } from '../../src/speech/speech.ts';
import { VoiceLibrary, type VoiceLibraryOptions } from '../../src/speech/voice-library.ts';
import { startFakeElevenLabs, type FakeElevenLabs } from '../fakes/elevenlabs-server.ts';

const API_KEY = 'sk_test_0123456789abcdef';

let eleven: FakeElevenLabs;

beforeEach(async () => {
  eleven = await startFakeElevenLabs({ apiKey: API_KEY, behaviour: { kind: 'audio', firstByteDelayMs: 20 } });
});
afterEach(async () => {
  await eleven.close();
});

function library(options: Partial<VoiceLibraryOptions> = {}) {
  return new VoiceLibrary({
    speech: createElevenLabsSpeech({ apiKey: API_KEY, voiceId: 'voice-1', baseUrl: eleven.url }),
    voiceKey: 'voice-1',
    ...options,
  });
}

const sent = () => eleven.requests.map((r) => r.body?.text);

describe('voice library: synthesis slots', () => {
  it('warms up the seven fixed phrases without ever asking for more at once than the plan allows', async () => {
    eleven.setConcurrencyLimit(4); // ElevenLabs' Free plan, Flash models
    const failed = await library({ maxConcurrent: 4 }).warmUp(PHRASES);
    expect(failed).toBe(0);
    expect(eleven.takePeakConcurrent()).toBe(4);
    expect(eleven.requests.map((r) => r.status)).toEqual(Object.values(PHRASES).map(() => 200));
  });

  it('voices a caller’s reply before the warm-up phrases still waiting for a slot', async () => {
    const voice = library({ maxConcurrent: 1 });
    const warming = voice.warmUp(PHRASES);
    await voice.replyPiece('CA1/t0', { text: 'We open at nine.' });
    // The first phrase already had the slot; the reply went next, the other phrases after it.
    expect(sent().slice(0, 2)).toEqual([Object.values(PHRASES)[0], 'We open at nine.']);
    expect(await warming).toBe(0);
    expect(sent().slice(2)).toEqual(Object.values(PHRASES).slice(1));
  });

  it('moves a phrase a caller now needs ahead of the rest of the warm-up, synthesising it once', async () => {
    const voice = library({ maxConcurrent: 1 });
    const warming = voice.warmUp(PHRASES);
    await voice.phrase('goodbye', PHRASES.goodbye);
    expect(sent().slice(0, 2)).toEqual([Object.values(PHRASES)[0], PHRASES.goodbye]);
    await warming;
    expect(sent().filter((text) => text === PHRASES.goodbye)).toHaveLength(1);
    expect(sent()).toHaveLength(Object.keys(PHRASES).length);
  });

  it('gives a piece up at its deadline, its wait for a slot included, without sending it', async () => {
    eleven.setBehaviour({ kind: 'hang' });
    const voice = library({ maxConcurrent: 1, deadlineMs: 300 });
    const asked = ['Another caller’s answer.', 'We open at nine.', 'Anything else?'];
    const results = await Promise.allSettled(asked.map((text, i) => voice.replyPiece(`CA${i}/t0`, { text })));
    for (const result of results) {
      expect(result.status).toBe('rejected');
      const error = (result as PromiseRejectedResult).reason as unknown;
      expect(error).toBeInstanceOf(SpeechError);
      expect((error as SpeechError).message).toMatch(/^no audio within 300 ms of asking \(\d+ ms of it waiting for a free synthesis slot\)$/);
    }
    // Only the first was ever sent: the others waited for the slot until their time was up.
    expect(sent()).toEqual([asked[0]]);
  });

  it('frees the slot of a synthesis that failed, for the next one', async () => {
    eleven.setBehaviour({ kind: 'sequence', steps: [{ kind: 'status', status: 401, detail: 'invalid_api_key' }, { kind: 'audio' }] });
    const voice = library({ maxConcurrent: 1 });
    const [first, second] = await Promise.allSettled([
      voice.replyPiece('CA1/t0', { text: 'First.' }),
      voice.replyPiece('CA2/t0', { text: 'Second.' }),
    ]);
    expect(first.status).toBe('rejected');
    expect(second.status).toBe('fulfilled');
  });
});
