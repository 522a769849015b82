/**
 * Twilio refuses a `<Say>` longer than 4,096 characters (error 13521): a long
 * answer read by the phone's own voice is said in several, cut between sentences.
 */
import { describe, expect, it } from 'vitest';
import { callMachine } from '../../../machines/call.machine.ts';
import { PureSteps } from '../../../src/engine/pure-steps.ts';
import { parseTwiml } from '../../../src/phone/twilio-caller.ts';
import { MAX_SAY_CHARS, renderCallTwiml, sayableParts } from '../../../src/transports/gather/twiml.ts';

const sentence = (i: number) => `This is sentence number ${i} of a long answer about opening hours and holidays. `;

describe('<Say> within Twilio’s length limit', () => {
  it('cuts a 5,500-character answer between sentences into <Say>s of at most 4,096 characters, losing nothing', () => {
    const text = Array.from({ length: 75 }, (_, i) => sentence(i)).join('').trim();
    expect(text.length).toBeGreaterThan(5_500);
    const parts = sayableParts(text);
    expect(parts.length).toBe(2);
    for (const part of parts) {
      expect(part.length).toBeLessThanOrEqual(MAX_SAY_CHARS);
      expect(part).toMatch(/\.$/);
    }
    expect(parts.join(' ')).toBe(text);
  });

  it('cuts between words a sentence with no end in sight, and inside a word only when it alone is too long', () => {
    const words = Array.from({ length: 1_000 }, (_, i) => `word${i}`).join(' ');
    const parts = sayableParts(words);
    expect(parts.every((p) => p.length <= MAX_SAY_CHARS)).toBe(true);
    expect(parts.join(' ')).toBe(words);
    const giant = '😀'.repeat(3_000);
    const cut = sayableParts(giant);
    expect(cut.every((p) => p.length <= MAX_SAY_CHARS && p.isWellFormed())).toBe(true);
    expect(cut.join('')).toBe(giant);
  });

  it('renders a long reply the phone reads as several <Say> verbs inside the <Gather>', () => {
    const steps = new PureSteps(callMachine);
    const snapshot = steps.initial({ callSid: `CA${'1'.repeat(32)}`, from: '+15550100001', to: '+15550100002', at: 0, agentTimeoutMs: 5_000 });
    const text = Array.from({ length: 75 }, (_, i) => sentence(i)).join('').trim();
    const view = {
      state: 'listening',
      context: { ...snapshot.context, prompt: { kind: 'reply' as const, key: 't0', text, pieces: [{ text }] } },
    };
    const twiml = renderCallTwiml(view, { baseUrl: 'https://voice.example.test', signAudio: (p) => p });
    const [gather] = parseTwiml(twiml);
    const says = (gather!.Gather as Array<Record<string, Array<{ '#text': string }>>>).filter((n) => 'Say' in n).map((n) => n.Say![0]!['#text']);
    expect(says.length).toBe(2);
    expect(says.every((s) => s.length <= MAX_SAY_CHARS)).toBe(true);
  });
});
