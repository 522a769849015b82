/**
 * The phone's own voice (`<Say>`), the fallback whenever a piece has no audio:
 * SAY_VOICE and SAY_LANGUAGE reach every `<Say>` the service answers, from the
 * call's own TwiML to the TwiML for a call it does not know.
 *
 * @see https://www.twilio.com/docs/voice/twiml/say
 */
import { afterEach, describe, expect, it } from 'vitest';
import { PHRASES } from '../../machines/call.machine.ts';
import { startService, type RunningService } from '../support/service.ts';

const running: RunningService[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((r) => r.close()));
});

/** Every `<Say ...>` opening tag of a document, with its attributes. */
const sayTags = (twiml: string) => [...twiml.matchAll(/<Say\b[^>]*>/g)].map((m) => m[0]);

describe('the phone’s voice', () => {
  it('speaks every <Say> with the configured voice and language', async () => {
    const svc = await startService({ SAY_VOICE: 'Polly.Joanna-Neural', SAY_LANGUAGE: 'en-US' });
    running.push(svc);
    const call = svc.call();

    const greeting = await call.dial();
    const turn = await call.say('When do you open?');
    const unknown = await svc.call().webhook('/speech-result', { SpeechResult: 'Hello?', Confidence: '0.9' });

    const documents = [...greeting.documents, ...turn.documents, unknown.body];
    expect(greeting.heard).toMatchObject([{ verb: 'Say', text: PHRASES.greeting }]);
    expect(turn.heard.some((h) => h.verb === 'Say')).toBe(true);
    expect(unknown.body).toContain("Sorry, this call can't be continued");
    const tags = documents.flatMap(sayTags);
    expect(tags.length).toBeGreaterThanOrEqual(3);
    for (const tag of tags) expect(tag).toBe('<Say voice="Polly.Joanna-Neural" language="en-US">');
  });

  it('leaves the voice to Twilio’s account default when none is configured', async () => {
    const svc = await startService();
    running.push(svc);
    const greeting = await svc.call().dial();
    expect(greeting.documents.flatMap(sayTags)).toEqual(['<Say>']);
  });
});
