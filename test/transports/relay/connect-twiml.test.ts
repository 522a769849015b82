import { describe, expect, it } from 'vitest';
import { readRelayConnect } from '../../../src/phone/relay-caller.ts';
import { parseTwiml } from '../../../src/phone/twilio-caller.ts';
import { renderRelayConnect, type RelayConnectOptions } from '../../../src/transports/relay/connect-twiml.ts';
import { RelayMessageError } from '../../../src/transports/relay/messages.ts';

const FULL: RelayConnectOptions = {
  url: 'wss://voice.example.com/relay',
  action: 'https://voice.example.com/relay-ended?attempt=1&from=voice',
  welcomeGreeting: 'Hello! How can I help?',
  language: 'en-US',
  ttsProvider: 'ElevenLabs',
  voice: 'UgBBYS2sOqTuMpoF3BR0',
  interruptible: 'speech',
  interruptSensitivity: 'medium',
  dtmfDetection: true,
  parameters: { callReference: 'CA0123', resumed: '1' },
};

/**
 * The `<ConversationRelay>` attributes Twilio's TwiML reference documents (and
 * twilio-node 6.2.0 types). TwilioDevEd/twiml-generator's XSD predates
 * `<Connect>` altogether, so this list is the check.
 */
const DOCUMENTED_ATTRIBUTES = new Set([
  'url', 'welcomeGreeting', 'welcomeGreetingInterruptible', 'language', 'ttsLanguage', 'ttsProvider', 'voice',
  'transcriptionLanguage', 'transcriptionProvider', 'speechModel', 'interruptible', 'interruptSensitivity',
  'dtmfDetection', 'reportInputDuringAgentSpeech', 'preemptible', 'partialPrompts', 'hints', 'debug', 'events',
  'elevenlabsTextNormalization', 'intelligenceService', 'profanityFilter',
]);

describe('the <Connect><ConversationRelay> TwiML', () => {
  it('renders every option exactly', () => {
    expect(renderRelayConnect(FULL)).toBe(
      '<?xml version="1.0" encoding="UTF-8"?><Response>' +
        '<Connect action="https://voice.example.com/relay-ended?attempt=1&amp;from=voice" method="POST">' +
        '<ConversationRelay url="wss://voice.example.com/relay" welcomeGreeting="Hello! How can I help?" language="en-US" ' +
        'ttsProvider="ElevenLabs" voice="UgBBYS2sOqTuMpoF3BR0" interruptible="speech" interruptSensitivity="medium" dtmfDetection="true">' +
        '<Parameter name="callReference" value="CA0123"/><Parameter name="resumed" value="1"/>' +
        '</ConversationRelay></Connect></Response>',
    );
  });

  it("leaves out what is not set, so Twilio's defaults apply", () => {
    expect(renderRelayConnect({ url: 'wss://voice.example.com/relay', action: 'https://voice.example.com/relay-ended' })).toBe(
      '<?xml version="1.0" encoding="UTF-8"?><Response>' +
        '<Connect action="https://voice.example.com/relay-ended" method="POST"><ConversationRelay url="wss://voice.example.com/relay"/></Connect>' +
        '</Response>',
    );
  });

  it('is one <Connect> holding one <ConversationRelay> of documented attributes and <Parameter>s only', () => {
    const verbs = parseTwiml(renderRelayConnect(FULL));
    expect(verbs.map((node) => Object.keys(node).filter((key) => key !== ':@'))).toEqual([['Connect']]);
    const nouns = verbs[0]!.Connect as typeof verbs;
    expect(nouns.map((node) => Object.keys(node).filter((key) => key !== ':@'))).toEqual([['ConversationRelay']]);
    const relay = nouns[0]!;
    for (const attribute of Object.keys(relay[':@'] ?? {})) expect(DOCUMENTED_ATTRIBUTES).toContain(attribute);
    const children = relay.ConversationRelay as typeof verbs;
    expect(children.map((node) => Object.keys(node).filter((key) => key !== ':@'))).toEqual([['Parameter'], ['Parameter']]);
  });

  it('reads back, as Twilio reads it, as the url, action and parameters it was given', () => {
    const read = readRelayConnect(renderRelayConnect(FULL));
    expect(read.url).toBe(FULL.url);
    expect(read.action).toBe(FULL.action);
    expect(read.parameters).toStrictEqual(FULL.parameters);
    expect(read.attributes).toMatchObject({ welcomeGreeting: FULL.welcomeGreeting, dtmfDetection: 'true', interruptible: 'speech' });
  });

  it('escapes the greeting and makes it speakable, as a <Say> is', () => {
    const read = readRelayConnect(renderRelayConnect({ ...FULL, welcomeGreeting: 'Tom & "Jerry" <say>\u0007hi' }));
    expect(read.attributes.welcomeGreeting).toBe('Tom & "Jerry" <say> hi');
  });

  it('refuses a parameter its own setup message could not carry back', () => {
    expect(() => renderRelayConnect({ ...FULL, parameters: { 'call reference': 'x' } })).toThrow(RelayMessageError);
    expect(() => renderRelayConnect({ ...FULL, parameters: { resumed: '1\u202e' } })).toThrow(RelayMessageError);
  });

  it('refuses a url that is not a WebSocket, or an action that is not http(s)', () => {
    expect(() => renderRelayConnect({ ...FULL, url: 'https://voice.example.com/relay' })).toThrow(RangeError);
    expect(() => renderRelayConnect({ ...FULL, action: 'wss://voice.example.com/relay-ended' })).toThrow(RangeError);
  });
});
