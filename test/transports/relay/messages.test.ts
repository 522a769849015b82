import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  MAX_HEARD_CHARS,
  MAX_RELAY_FRAME_BYTES,
  parseServiceMessage,
  parseTwilioMessage,
  RelayMessageError,
  serialiseServiceMessage,
  type ServiceMessage,
} from '../../../src/transports/relay/messages.ts';
import { speechEventOf } from '../../../src/transports/gather/events.ts';
import { MAX_UTTERANCE_CHARS } from '../../../src/twilio/call-input.ts';
import { compact, FROM_TWILIO, TO_TWILIO } from '../../fixtures/relay/twilio-docs-examples.ts';

const CALL_SID = 'CA0123456789abcdef0123456789abcdef';
const SESSION_ID = 'VX0123456789abcdef0123456789abcdef';

function setupWith(fields: Record<string, unknown>): string {
  return JSON.stringify({ type: 'setup', sessionId: SESSION_ID, callSid: CALL_SID, from: '+15550100001', to: '+15550100002', direction: 'inbound', ...fields });
}

function refusal(data: string | Uint8Array, isBinary = false): unknown {
  try {
    parseTwilioMessage(data, isBinary);
  } catch (error) {
    return error;
  }
  return undefined;
}

describe('messages from Twilio', () => {
  it("parse Twilio's documented examples to the values they stand for", () => {
    expect(parseTwilioMessage(FROM_TWILIO.setup)).toStrictEqual({
      type: 'setup',
      sessionId: 'VX00000000000000000000000000000000',
      callSid: 'CA00000000000000000000000000000000',
      from: '+18005550100',
      to: '+18005550101',
      direction: 'inbound',
      customParameters: { callReference: 'bar' },
    });
    expect(parseTwilioMessage(FROM_TWILIO.setupEarlier)).toStrictEqual({
      type: 'setup',
      sessionId: 'VX00000000000000000000000000000000',
      callSid: 'CA00000000000000000000000000000000',
      from: '+14151234567',
      to: '+18881234567',
      direction: 'inbound',
      customParameters: { foo: 'bar' },
    });
    expect(parseTwilioMessage(FROM_TWILIO.prompt)).toStrictEqual({
      type: 'prompt',
      voicePrompt: 'Hi! Can you tell me about life?',
      lang: 'en-US',
      last: true,
    });
    expect(parseTwilioMessage(FROM_TWILIO.dtmf)).toStrictEqual({ type: 'dtmf', digit: '1' });
    expect(parseTwilioMessage(FROM_TWILIO.error)).toStrictEqual({ type: 'error', description: 'Invalid message received: { "foo" : "bar" }' });
  });

  it('give the interrupt duration as a number whether Twilio wrote 460 or "460"', () => {
    const heard = { type: 'interrupt', utteranceUntilInterrupt: 'Life is a complex set of', durationUntilInterruptMs: 460 };
    expect(parseTwilioMessage(FROM_TWILIO.interrupt)).toStrictEqual(heard);
    expect(parseTwilioMessage(FROM_TWILIO.interruptEarlier)).toStrictEqual(heard);
  });

  it('read a frame the same from the bytes ws hands over as from a string', () => {
    expect(parseTwilioMessage(Buffer.from(FROM_TWILIO.setup, 'utf8'))).toStrictEqual(parseTwilioMessage(FROM_TWILIO.setup));
  });

  it('ignore message types they do not know, without calling them errors', () => {
    expect(parseTwilioMessage('{"type":"agentSpeaking","value":"on"}')).toStrictEqual({ type: 'ignored', messageType: 'agentSpeaking' });
    expect(parseTwilioMessage('{"type":"info","name":"tokensPlayed"}')).toStrictEqual({ type: 'ignored', messageType: 'info' });
  });

  it('leave a prompt without lang without one, and a setup without parameters with none', () => {
    expect(parseTwilioMessage('{"type":"prompt","voicePrompt":"hello","last":false}')).toStrictEqual({ type: 'prompt', voicePrompt: 'hello', last: false });
    expect(parseTwilioMessage(setupWith({}))).toStrictEqual({
      type: 'setup',
      sessionId: SESSION_ID,
      callSid: CALL_SID,
      from: '+15550100001',
      to: '+15550100002',
      direction: 'inbound',
      customParameters: {},
    });
  });

  it('hand the caller words on exactly as the <Gather> path does: speakable, single-spaced', () => {
    for (const raw of ['  I need\u0007 a  taxi \n', 'caf\u00e9 \u0000 ol\u00e9', 'lone \uD800 surrogate', '\u0085next line']) {
      const prompt = parseTwilioMessage(JSON.stringify({ type: 'prompt', voicePrompt: raw, last: true }));
      const gathered = speechEventOf({ SpeechResult: raw }, 0);
      expect(prompt).toMatchObject({ voicePrompt: gathered.type === 'SPEECH' ? gathered.text : '' });
    }
  });

  it('keep a parameter named __proto__ a parameter, not a prototype', () => {
    const setup = parseTwilioMessage(setupWith({ customParameters: JSON.parse('{"__proto__":"x","turn":"3"}') }));
    expect(setup.type === 'setup' && Object.getPrototypeOf(setup.customParameters)).toBe(Object.prototype);
    expect(setup).toMatchObject({ customParameters: { turn: '3' } });
    expect(setup.type === 'setup' && Object.hasOwn(setup.customParameters, '__proto__')).toBe(true);
  });

  const malformed: Array<[string, string | Uint8Array, boolean?]> = [
    ['not JSON', 'hello'],
    ['cut-off JSON', '{"type":"prompt","voicePrompt":"hel'],
    ['an empty frame', ''],
    ['a JSON array', '[{"type":"prompt"}]'],
    ['JSON null', 'null'],
    ['a JSON string', '"setup"'],
    ['a binary frame, even of valid JSON', Buffer.from(FROM_TWILIO.dtmf), true],
    ['bytes that are not UTF-8', Uint8Array.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d])],
    ['an oversized frame, even of valid JSON', JSON.stringify({ type: 'dtmf', digit: '1', padding: 'x'.repeat(MAX_RELAY_FRAME_BYTES) })],
    ['no type', '{"voicePrompt":"hi","last":true}'],
    ['a type that is a number', '{"type":7}'],
    ['a type with a control character', '{"type":"prompt\\u0000"}'],
    ['an overlong type', JSON.stringify({ type: 'x'.repeat(41) })],
    ['a setup without callSid', setupWith({ callSid: undefined })],
    ['a setup whose callSid is not CA + 32 hex', setupWith({ callSid: 'CA123' })],
    ['a setup whose callSid has a bidi override', setupWith({ callSid: `\u202e${CALL_SID}` })],
    ['a setup without sessionId', setupWith({ sessionId: undefined })],
    ['a setup whose from is a number', setupWith({ from: 15550100001 })],
    ['a setup whose from hides a bidi override', setupWith({ from: '+1555\u202e0100001' })],
    ['a setup whose to is huge', setupWith({ to: `+${'1'.repeat(500)}` })],
    ['a setup whose direction is missing', setupWith({ direction: undefined })],
    ['a setup whose customParameters is an array', setupWith({ customParameters: ['a'] })],
    ['a setup whose customParameters is null', setupWith({ customParameters: null })],
    ['a parameter value that is not a string', setupWith({ customParameters: { turn: 3 } })],
    ['a parameter value with a control character', setupWith({ customParameters: { turn: 'a\u0007' } })],
    ['a parameter value with a bidi isolate', setupWith({ customParameters: { turn: '\u20663' } })],
    ['a parameter value with a zero-width space', setupWith({ customParameters: { turn: '3\u200b' } })],
    ['a huge parameter value', setupWith({ customParameters: { turn: 'x'.repeat(1_001) } })],
    ['a parameter name with a space', setupWith({ customParameters: { 'call reference': 'bar' } })],
    ['too many parameters', setupWith({ customParameters: Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`p${i}`, 'v'])) })],
    ['a prompt without voicePrompt', '{"type":"prompt","last":true}'],
    ['a prompt whose voicePrompt is a number', '{"type":"prompt","voicePrompt":42,"last":true}'],
    ['a prompt longer than any caller turn', JSON.stringify({ type: 'prompt', voicePrompt: 'a'.repeat(MAX_UTTERANCE_CHARS + 1), last: true })],
    ['a prompt without last', '{"type":"prompt","voicePrompt":"hi"}'],
    ['a prompt whose last is the string "true"', '{"type":"prompt","voicePrompt":"hi","last":"true"}'],
    ['a prompt whose lang has a space', '{"type":"prompt","voicePrompt":"hi","lang":"en US","last":true}'],
    ['a prompt whose lang has a bidi mark', '{"type":"prompt","voicePrompt":"hi","lang":"en-US\\u200f","last":true}'],
    ['an interrupt without a duration', '{"type":"interrupt","utteranceUntilInterrupt":"Life is"}'],
    ['an interrupt with a negative duration', '{"type":"interrupt","utteranceUntilInterrupt":"Life is","durationUntilInterruptMs":-1}'],
    ['an interrupt with a fractional duration', '{"type":"interrupt","utteranceUntilInterrupt":"Life is","durationUntilInterruptMs":1.5}'],
    ['an interrupt with a duration in exponent form', '{"type":"interrupt","utteranceUntilInterrupt":"Life is","durationUntilInterruptMs":"4.6e2"}'],
    ['an interrupt with a duration that is not a number', '{"type":"interrupt","utteranceUntilInterrupt":"Life is","durationUntilInterruptMs":"soon"}'],
    ['an interrupt with a duration of years', '{"type":"interrupt","utteranceUntilInterrupt":"Life is","durationUntilInterruptMs":99999999999}'],
    ['an interrupt without what was heard', '{"type":"interrupt","durationUntilInterruptMs":460}'],
    ['an interrupt quoting more than was ever said', JSON.stringify({ type: 'interrupt', utteranceUntilInterrupt: 'a'.repeat(MAX_HEARD_CHARS + 1), durationUntilInterruptMs: 460 })],
    ['a dtmf of two digits', '{"type":"dtmf","digit":"12"}'],
    ['a dtmf of no digit', '{"type":"dtmf","digit":""}'],
    ['a dtmf of a letter', '{"type":"dtmf","digit":"a"}'],
    ['a dtmf digit as a number', '{"type":"dtmf","digit":1}'],
    ['an error without description', '{"type":"error"}'],
  ];

  it.each(malformed)('refuse %s with a RelayMessageError', (_name, data, isBinary = false) => {
    const error = refusal(data, isBinary);
    expect(error).toBeInstanceOf(RelayMessageError);
  });

  it('name the field at fault without quoting the caller', () => {
    const error = refusal(JSON.stringify({ type: 'prompt', voicePrompt: 'my card number is 4111 '.repeat(200), last: true })) as Error;
    expect(error.message).toContain('voicePrompt');
    expect(error.message).not.toContain('4111');
  });

  it('throw nothing but RelayMessageError, whatever arrives', () => {
    const knownType = fc.constantFrom('setup', 'prompt', 'interrupt', 'dtmf', 'error', 'text', 'ignored');
    const frames = fc.oneof(
      fc.string({ unit: 'binary' }),
      fc.json(),
      fc.dictionary(fc.string(), fc.jsonValue()).chain((fields) => knownType.map((type) => JSON.stringify({ ...fields, type }))),
      fc.record({ type: knownType, voicePrompt: fc.anything(), last: fc.anything(), durationUntilInterruptMs: fc.anything(), customParameters: fc.anything() }).map((m) => JSON.stringify(m) ?? ''),
    );
    fc.assert(
      fc.property(frames, fc.boolean(), (frame, asBytes) => {
        const error = refusal(asBytes ? Buffer.from(frame) : frame);
        return error === undefined || error instanceof RelayMessageError;
      }),
      { numRuns: 2_000 },
    );
    fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
      const error = refusal(bytes);
      return error === undefined || error instanceof RelayMessageError;
    }));
  });
});

describe('messages to Twilio', () => {
  const documented: Array<[keyof typeof TO_TWILIO, ServiceMessage]> = [
    ['text', { type: 'text', token: 'Hello world!', last: false, interruptible: false, preemptible: false }],
    ['textWithSsml', { type: 'text', token: 'Hello from <phoneme alphabet="ipa" ph="ˈtwɪlioʊ">Twilio</phoneme>.', last: false, interruptible: false, preemptible: false }],
    ['play', { type: 'play', source: 'https://api.twilio.com/cowbell.mp3', loop: 1, preemptible: false, interruptible: true }],
    ['sendDigits', { type: 'sendDigits', digits: '9www4085551212' }],
    ['language', { type: 'language', ttsLanguage: 'sv-SE', transcriptionLanguage: 'en-US' }],
    ['end', { type: 'end', handoffData: '{"reasonCode":"live-agent-handoff", "reason": "The caller wants to talk to a real person"}' }],
  ];

  it.each(documented)("serialise to exactly Twilio's documented %s message", (name, message) => {
    expect(serialiseServiceMessage(message)).toBe(compact(TO_TWILIO[name]));
  });

  it.each(documented)('read the documented %s message back as the value that wrote it', (name, message) => {
    expect(parseServiceMessage(TO_TWILIO[name])).toStrictEqual(message);
    expect(parseServiceMessage(serialiseServiceMessage(message))).toStrictEqual(message);
  });

  it('write only the optional fields that are set, lang after last as in the field table', () => {
    expect(serialiseServiceMessage({ type: 'text', token: 'Hi', last: true })).toBe('{"type":"text","token":"Hi","last":true}');
    expect(serialiseServiceMessage({ type: 'text', token: 'Hej', last: false, lang: 'sv-SE' })).toBe('{"type":"text","token":"Hej","last":false,"lang":"sv-SE"}');
    expect(serialiseServiceMessage({ type: 'end' })).toBe('{"type":"end"}');
    expect(serialiseServiceMessage({ type: 'language', ttsLanguage: 'fr-FR' })).toBe('{"type":"language","ttsLanguage":"fr-FR"}');
  });

  it('send tokens untrimmed ("the tokens should have appropriate spaces between them"), and an empty last token', () => {
    expect(serialiseServiceMessage({ type: 'text', token: ' world', last: false })).toBe('{"type":"text","token":" world","last":false}');
    expect(serialiseServiceMessage({ type: 'text', token: '', last: true })).toBe('{"type":"text","token":"","last":true}');
  });

  it('never send a control character to be spoken: it becomes a space, as in a <Say>', () => {
    expect(serialiseServiceMessage({ type: 'text', token: 'one\u0000two\u001b', last: false })).toBe('{"type":"text","token":"one two ","last":false}');
  });

  it('give Twilio the default last:false when a text message omits it', () => {
    expect(parseServiceMessage('{"type":"text","token":"Hi"}')).toStrictEqual({ type: 'text', token: 'Hi', last: false });
  });

  const refused: Array<[string, string]> = [
    ['a text whose token is null', '{"type":"text","token":null,"last":true}'],
    ['a text without token', '{"type":"text","last":true}'],
    ['a text whose last is a string', '{"type":"text","token":"Hi","last":"yes"}'],
    ['a text in no language', '{"type":"text","token":"Hi","last":true,"lang":"english please"}'],
    ['a play of no URL', '{"type":"play","source":"cowbell"}'],
    ['a play of an ftp URL', '{"type":"play","source":"ftp://api.twilio.com/cowbell.mp3"}'],
    ['a play looping a fractional number of times', '{"type":"play","source":"https://api.twilio.com/cowbell.mp3","loop":1.5}'],
    ['a play looping past the maximum', '{"type":"play","source":"https://api.twilio.com/cowbell.mp3","loop":1001}'],
    ['a play looping a negative number of times', '{"type":"play","source":"https://api.twilio.com/cowbell.mp3","loop":-1}'],
    ['sendDigits of no digits', '{"type":"sendDigits","digits":""}'],
    ['sendDigits of letters', '{"type":"sendDigits","digits":"12ab"}'],
    ['a language message with neither language', '{"type":"language"}'],
    ['an end whose handoffData is not JSON', '{"type":"end","handoffData":"transfer me"}'],
    ['an end whose handoffData is an object, not a string', '{"type":"end","handoffData":{"reasonCode":"x"}}'],
    ['a message type ConversationRelay does not take', '{"type":"speak","token":"Hi"}'],
  ];

  it.each(refused)('refuse %s, as Twilio would (error 64107)', (_name, frame) => {
    expect(() => parseServiceMessage(frame)).toThrow(RelayMessageError);
  });

  it('refuse to serialise what Twilio would refuse', () => {
    expect(() => serialiseServiceMessage({ type: 'sendDigits', digits: 'one' })).toThrow(RelayMessageError);
    expect(() => serialiseServiceMessage({ type: 'end', handoffData: '{not json' })).toThrow(RelayMessageError);
    expect(() => serialiseServiceMessage({ type: 'language' })).toThrow(RelayMessageError);
  });

  it('round-trip any text message: Twilio reads back the speakable form of what was written', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary' }), fc.boolean(), fc.option(fc.boolean(), { nil: undefined }), (token, last, interruptible) => {
        const message: ServiceMessage = interruptible === undefined ? { type: 'text', token, last } : { type: 'text', token, last, interruptible };
        const read = parseServiceMessage(serialiseServiceMessage(message));
        expect(serialiseServiceMessage(read)).toBe(serialiseServiceMessage(message));
        expect(read).toMatchObject({ last, ...(interruptible === undefined ? {} : { interruptible }) });
      }),
    );
  });
});
