/**
 * The TwiML a streamed call's `listening` answers: `<Connect action>` holding a
 * `<ConversationRelay>` whose `url` is the service's socket and whose
 * `welcomeGreeting` is the phrase the caller hears first, golden
 * (./golden/*.xml, checked by eye against Twilio's reference:
 * https://www.twilio.com/docs/voice/twiml/connect/conversationrelay#attributes and
 * https://www.twilio.com/docs/voice/twiml/connect: `action`, `method`; `url`,
 * `welcomeGreeting`, `language`, `ttsProvider`, `voice`, `interruptible`,
 * `interruptSensitivity`, `dtmfDetection`). Views come from the machine's own
 * pure transitions on a streamed call.
 */
import { describe, expect, it } from 'vitest';
import { initialTransition, type SnapshotFrom } from 'xstate';
import { callMachine, PHRASES, stateName, type CallContext, type CallEvent, type CallMachine } from '../../../machines/call.machine.ts';
import type { CallView } from '../../../src/engine/call-engine.ts';
import { PureSteps } from '../../../src/engine/pure-steps.ts';
import { readRelayConnect } from '../../../src/phone/relay-caller.ts';
import { relaySocketUrl, renderRelayListening, renderResumeWait, type RelaySettings } from '../../../src/transports/relay/webhook-twiml.ts';

const T0 = 1_767_225_600_000;
const BASE_URL = 'https://voice.example.com';
const SETTINGS: RelaySettings = { language: 'en-US', interruptible: 'any' };
const ELEVENLABS: RelaySettings = { language: 'en-GB', ttsProvider: 'ElevenLabs', voice: 'UgBBYS2sOqTuMpoF3BR0', interruptible: 'speech', interruptSensitivity: 'medium' };
const pure = new PureSteps(callMachine);

function call(...events: Array<CallEvent | { type: `xstate.done.actor.${string}`; output: unknown }>): SnapshotFrom<CallMachine> {
  let snapshot = pure.initial({ callSid: 'CA0123456789abcdef0123456789abcdef', from: '+14155551234', to: '+16175551212', at: T0, agentTimeoutMs: 8_000, replyDelivery: 'streamed' });
  for (const event of events) snapshot = pure.next(snapshot, event as CallEvent);
  return snapshot;
}
const view = (snapshot: SnapshotFrom<CallMachine>): CallView => ({ state: String(snapshot.value), context: snapshot.context });
const spoken = { type: 'xstate.done.actor.voice', output: { at: T0 + 100 } } as const;

describe("a streamed call's <Connect><ConversationRelay>", () => {
  it('greets a new call with the greeting as the welcome greeting, key presses reported', async () => {
    const greeted = call(spoken);
    const twiml = renderRelayListening(view(greeted), BASE_URL, SETTINGS);
    await expect(twiml).toMatchFileSnapshot('./golden/listening-greeting.xml');
    expect(readRelayConnect(twiml)).toMatchObject({ url: 'wss://voice.example.com/relay', action: 'https://voice.example.com/relay-ended', attributes: { welcomeGreeting: PHRASES.greeting, dtmfDetection: 'true' } });
  });

  it('resumes a call whose session dropped with the machine\u2019s "we were cut off" line, in the configured voice', async () => {
    const resumed = call(spoken, { type: 'RECONNECTED', at: T0 + 7_000 }, spoken);
    expect([resumed.value, resumed.context.prompt.text]).toStrictEqual(['listening', PHRASES.resumed]);
    const twiml = renderRelayListening(view(resumed), BASE_URL, ELEVENLABS);
    await expect(twiml).toMatchFileSnapshot('./golden/listening-resumed.xml');
    expect(readRelayConnect(twiml).attributes).toMatchObject({ welcomeGreeting: PHRASES.resumed, ttsProvider: 'ElevenLabs', voice: 'UgBBYS2sOqTuMpoF3BR0', language: 'en-GB' });
  });

  it('gives no welcome greeting when the prompt is a reply: its words were streamed on the socket', async () => {
    const replied = call(
      spoken,
      { type: 'SPEECH', text: 'When do you open?', at: T0 + 5_000 },
      { type: 'xstate.done.actor.agent', output: { text: 'We', firstChunkAt: T0 + 5_100, at: T0 + 5_100 } },
      { type: 'xstate.done.actor.voice', output: { at: T0 + 5_500, pieces: [{ text: 'We open at nine.' }], more: false } },
    );
    expect([replied.value, replied.context.prompt.kind]).toStrictEqual(['listening', 'reply']);
    const twiml = renderRelayListening(view(replied), BASE_URL, SETTINGS);
    await expect(twiml).toMatchFileSnapshot('./golden/listening-reply.xml');
    expect(readRelayConnect(twiml).attributes).not.toHaveProperty('welcomeGreeting');
  });

  it('opens wss:// for an https:// service and ws:// for an http:// one, under its own path', () => {
    expect(relaySocketUrl('https://voice.example.com')).toBe('wss://voice.example.com/relay');
    expect(relaySocketUrl('http://127.0.0.1:8080')).toBe('ws://127.0.0.1:8080/relay');
    expect(relaySocketUrl('https://example.com/heyai')).toBe('wss://example.com/heyai/relay');
    const read = readRelayConnect(renderRelayListening(view(call(spoken)), 'http://127.0.0.1:8080', SETTINGS));
    expect([read.url, read.action]).toStrictEqual(['ws://127.0.0.1:8080/relay', 'http://127.0.0.1:8080/relay-ended']);
  });
});

function waitingView(filler: CallContext['filler']): CallView {
  const [snapshot] = initialTransition(callMachine, { callSid: `CA${'1'.repeat(32)}`, from: '+15550100001', to: '+15550100002', at: 0, agentTimeoutMs: 5_000, replyDelivery: 'streamed' });
  return { state: stateName(snapshot.value), context: { ...snapshot.context, filler }, pending: { type: 'RECONNECTED', at: 1 } };
}

describe('the action URL’s wait while another instance holds the turn', () => {
  it('says the machine’s filler, then sends Twilio back to the action URL with RECONNECTED still to apply', () => {
    expect(renderResumeWait(waitingView('hold'), 'https://voice.example.test', {})).toBe(
      '<?xml version="1.0" encoding="UTF-8"?><Response><Say>One moment.</Say>' +
        '<Redirect method="POST">https://voice.example.test/relay-ended</Redirect></Response>',
    );
    expect(renderResumeWait(waitingView('pause'), 'https://voice.example.test', { sayVoice: 'Polly.Joanna' })).toBe(
      '<?xml version="1.0" encoding="UTF-8"?><Response><Pause length="1"/>' +
        '<Redirect method="POST">https://voice.example.test/relay-ended</Redirect></Response>',
    );
    expect(renderResumeWait(waitingView('hold'), 'https://voice.example.test', { sayVoice: 'Polly.Joanna', sayLanguage: 'en-GB' })).toContain(
      '<Say voice="Polly.Joanna" language="en-GB">One moment.</Say>',
    );
  });
});
