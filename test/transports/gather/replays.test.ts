/**
 * Replays. Twilio's idempotency header is not covered by its signature, so a
 * captured signed `/speech-result` can be sent again without it or with another:
 * what the signature does cover (the action URL names the prompt it answers,
 * `?floor=`) keeps it from making a second turn.
 */
import { describe, expect, it } from 'vitest';
import { parseTwiml } from '../../../src/phone/twilio-caller.ts';
import { useFakeBackends } from '../../support/fake-backends.ts';
import { twilioPost } from '../../support/relay-call.ts';
import { PUBLIC_BASE_URL, startService } from '../../support/service.ts';

const fakes = useFakeBackends();

function gatherAction(twiml: string): string {
  const gather = parseTwiml(twiml).find((node) => 'Gather' in node);
  return String((gather?.[':@'] as Record<string, string> | undefined)?.action);
}

describe('a replayed <Gather> result', () => {
  it('makes no second turn, whatever idempotency header it carries, and the next real result still does', async () => {
    const svc = await startService({ KOOZIE_AGENT_URI: fakes.agent.url });
    fakes.running.push(svc);
    const callSid = `CA${'5'.repeat(32)}`;
    const voice = await twilioPost(svc.address, '/voice', { CallSid: callSid, From: '+15550100001', To: '+15550100002', CallStatus: 'ringing' });
    const firstAction = gatherAction(voice.body).slice(PUBLIC_BASE_URL.length);
    expect(firstAction).toBe('/speech-result?floor=1');
    const form = { CallSid: callSid, SpeechResult: 'What are your hours?', Confidence: '0.9' };

    const answered = await twilioPost(svc.address, firstAction, form);
    const secondAction = gatherAction(answered.body).slice(PUBLIC_BASE_URL.length);
    expect(secondAction).toBe('/speech-result?floor=2');
    // The same signed request, again: without the header, then with made-up ones.
    for (const token of [undefined, 'replay-1', 'replay-2']) {
      const replay = await twilioPost(svc.address, firstAction, form, token === undefined ? {} : { 'i-twilio-idempotency-token': token });
      expect(replay.status).toBe(200);
      expect(gatherAction(replay.body)).toBe(`${PUBLIC_BASE_URL}${secondAction}`);
    }
    expect(fakes.agent.requests.map((r) => r.message)).toEqual(['What are your hours?']);
    expect((await svc.service.store.getRecord(callSid))?.turns).toHaveLength(1);

    // The caller really says the same words again, at the new prompt: a new turn.
    await twilioPost(svc.address, secondAction, form);
    expect(fakes.agent.requests.map((r) => r.message)).toEqual(['What are your hours?', 'What are your hours?']);
    expect(svc.logs.some((l) => String(l.message).startsWith('ignored an answer to a prompt the call has moved past'))).toBe(true);
  });
});
