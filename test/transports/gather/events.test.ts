/**
 * The `<Gather>` transport's input translator: Twilio's form posts → machine
 * events. The bodies are what Twilio posts, parameter for parameter, as its docs
 * list them:
 * - every TwiML voice request: AccountSid, ApiVersion, CallSid, CallStatus, Called,
 *   Caller, Direction, From, To (https://www.twilio.com/docs/voice/twiml#request-parameters)
 * - a `<Gather>` action adds Digits, or SpeechResult and Confidence
 *   (https://www.twilio.com/docs/voice/twiml/gather#action)
 * - a status callback adds CallDuration, Timestamp, CallbackSource, SequenceNumber
 *   (https://www.twilio.com/docs/voice/api/call-resource#statuscallback)
 * and are parsed from `application/x-www-form-urlencoded` as the service's form
 * parser does (a repeated parameter becomes an array).
 */
import { describe, expect, it } from 'vitest';
import {
  callSidOf,
  callStartOf,
  floorOf,
  playedEventOf,
  recoveredSpeechOf,
  serviceFailuresOf,
  speechEventOf,
  statusEventOf,
  WebhookInputError,
  type TwilioForm,
} from '../../../src/transports/gather/events.ts';
import { MAX_UTTERANCE_CHARS } from '../../../src/twilio/call-input.ts';

const CALL_SID = 'CA0123456789abcdef0123456789abcdef';
const AT = 1_767_225_600_000;

/** What Twilio sends with every request of an inbound call in progress. */
const VOICE_REQUEST =
  'AccountSid=AC00000000000000000000000000000000&ApiVersion=2010-04-01' +
  `&CallSid=${CALL_SID}&CallStatus=in-progress&Called=%2B16175551212&Caller=%2B14155551234` +
  '&Direction=inbound&From=%2B14155551234&To=%2B16175551212';

function form(urlencoded: string): TwilioForm {
  return Object.fromEntries(new URLSearchParams(urlencoded));
}

function refusal(read: () => unknown): string | undefined {
  try {
    read();
  } catch (error) {
    expect(error).toBeInstanceOf(WebhookInputError);
    return (error as Error).message;
  }
  return undefined;
}

describe("a call's identity", () => {
  it('is the CallSid, From and To of the incoming call webhook, as Twilio formats them', () => {
    const ringing = form(VOICE_REQUEST.replace('CallStatus=in-progress', 'CallStatus=ringing'));
    expect(callStartOf(ringing)).toStrictEqual({ callSid: CALL_SID, from: '+14155551234', to: '+16175551212' });
  });

  it('keeps a client identifier and a SIP address, and strips what is not part of a number', () => {
    // "Client identifiers begin with the client: URI scheme" (request parameters, From/To).
    const fromClient = form(`${VOICE_REQUEST}`.replace('From=%2B14155551234', 'From=client%3Atommy').replace('To=%2B16175551212', 'To=sip%3Ajenny%40example.com'));
    expect(callStartOf(fromClient)).toMatchObject({ from: 'client:tommy', to: 'sip:jenny@example.com' });
    expect(callStartOf({ CallSid: CALL_SID, From: '+1 (415) <b>555</b>\u0000', To: 'x'.repeat(200) })).toMatchObject({ from: '+1415b555b', to: 'x'.repeat(64) });
    expect(callStartOf({ CallSid: CALL_SID })).toMatchObject({ from: '', to: '' });
  });

  it('refuses a missing, malformed or repeated CallSid', () => {
    expect(refusal(() => callSidOf({}))).toBe('CallSid is missing or malformed');
    expect(refusal(() => callSidOf({ CallSid: 'CA123' }))).toBe('CallSid is missing or malformed');
    expect(refusal(() => callSidOf({ CallSid: `${CALL_SID}0` }))).toBe('CallSid is missing or malformed');
    expect(refusal(() => callSidOf({ CallSid: CALL_SID.replace('CA', 'AC') }))).toBe('CallSid is missing or malformed');
    expect(refusal(() => callSidOf({ CallSid: [CALL_SID, CALL_SID] }))).toBe('CallSid must appear once');
    expect(refusal(() => callStartOf({ CallSid: CALL_SID, From: ['+1', '+2'] }))).toBe('From must appear once');
  });
});

describe('a <Gather> result', () => {
  it('is SPEECH with the words and Twilio\u2019s confidence', () => {
    const spoken = form(`${VOICE_REQUEST}&SpeechResult=What+are+your+opening+hours%3F&Confidence=0.9235493`);
    expect(speechEventOf(spoken, AT)).toStrictEqual({ type: 'SPEECH', text: 'What are your opening hours?', confidence: 0.9235493, at: AT });
  });

  it('is SPEECH without a confidence when Twilio leaves it out, sends it empty, or sends one outside 0..1', () => {
    const words = `${VOICE_REQUEST}&SpeechResult=Hello`;
    const heard = { type: 'SPEECH', text: 'Hello', at: AT };
    expect(speechEventOf(form(words), AT)).toStrictEqual(heard);
    expect(speechEventOf(form(`${words}&Confidence=`), AT)).toStrictEqual(heard);
    expect(speechEventOf(form(`${words}&Confidence=1.5`), AT)).toStrictEqual(heard);
    expect(speechEventOf(form(`${words}&Confidence=-0.1`), AT)).toStrictEqual(heard);
    expect(speechEventOf(form(`${words}&Confidence=high`), AT)).toStrictEqual(heard);
    expect(speechEventOf(form(`${words}&Confidence=0`), AT)).toStrictEqual({ ...heard, confidence: 0 });
  });

  it('is SILENCE when nothing was heard (actionOnEmptyResult), or only what cannot be spoken', () => {
    expect(speechEventOf(form(VOICE_REQUEST), AT)).toStrictEqual({ type: 'SILENCE', at: AT });
    expect(speechEventOf(form(`${VOICE_REQUEST}&SpeechResult=&Confidence=0`), AT)).toStrictEqual({ type: 'SILENCE', at: AT });
    expect(speechEventOf({ ...form(VOICE_REQUEST), SpeechResult: ' \u0000\u0007\t\n ' }, AT)).toStrictEqual({ type: 'SILENCE', at: AT });
  });

  it('makes the words speakable and bounded: control characters and runs of space become one space', () => {
    const event = speechEventOf({ ...form(VOICE_REQUEST), SpeechResult: '  book\u0000a \n\n table\uFFFF ' }, AT);
    expect(event).toStrictEqual({ type: 'SPEECH', text: 'book a table', at: AT });
    const long = speechEventOf({ ...form(VOICE_REQUEST), SpeechResult: 'word '.repeat(1_000) }, AT);
    expect(long.type === 'SPEECH' && long.text.length).toBe(MAX_UTTERANCE_CHARS);
    // Cut between the halves of a surrogate pair, the rest is still well-formed text.
    const emoji = speechEventOf({ ...form(VOICE_REQUEST), SpeechResult: `${'a'.repeat(MAX_UTTERANCE_CHARS - 1)}\u{1F600}` }, AT);
    expect(emoji.type === 'SPEECH' && emoji.text.isWellFormed()).toBe(true);
  });

  it('is DIGITS when the caller pressed keys, whatever speech came with it', () => {
    expect(speechEventOf(form(`${VOICE_REQUEST}&Digits=1`), AT)).toStrictEqual({ type: 'DIGITS', digits: '1', at: AT });
    expect(speechEventOf(form(`${VOICE_REQUEST}&Digits=*0%23`), AT)).toStrictEqual({ type: 'DIGITS', digits: '*0#', at: AT });
    expect(speechEventOf(form(`${VOICE_REQUEST}&Digits=2&SpeechResult=two`), AT)).toStrictEqual({ type: 'DIGITS', digits: '2', at: AT });
    // An empty Digits is no key press.
    expect(speechEventOf(form(`${VOICE_REQUEST}&Digits=&SpeechResult=two`), AT)).toMatchObject({ type: 'SPEECH', text: 'two' });
  });

  it('refuses digits that are not DTMF keys, too many of them, and repeated fields', () => {
    expect(refusal(() => speechEventOf(form(`${VOICE_REQUEST}&Digits=12a`), AT))).toBe('Digits is malformed');
    expect(refusal(() => speechEventOf(form(`${VOICE_REQUEST}&Digits=${'1'.repeat(33)}`), AT))).toBe('Digits is malformed');
    expect(refusal(() => speechEventOf({ Digits: ['1', '2'] }, AT))).toBe('Digits must appear once');
    expect(refusal(() => speechEventOf({ SpeechResult: ['yes', 'no'] }, AT))).toBe('SpeechResult must appear once');
    expect(refusal(() => speechEventOf({ SpeechResult: 'yes', Confidence: ['0.1', '0.2'] }, AT))).toBe('Confidence must appear once');
  });
});

describe("the caller's words brought back by a recovery redirect", () => {
  // renderRecovery's retry URL: /speech-result?attempt=1&heardAt=...&Confidence=...&SpeechResult=...
  it('are SPEECH at the time they were first heard, with their confidence', () => {
    const query = form(`attempt=1&heardAt=${AT}&Confidence=0.8&SpeechResult=I+need+a+taxi`);
    expect(recoveredSpeechOf(query)).toStrictEqual({ type: 'SPEECH', text: 'I need a taxi', confidence: 0.8, at: AT });
    expect(recoveredSpeechOf(form(`attempt=2&heardAt=${AT}&SpeechResult=hi`))).toStrictEqual({ type: 'SPEECH', text: 'hi', at: AT });
  });

  it('are nothing for a plain <Gather> result, whose action URL has only its floor', () => {
    expect(recoveredSpeechOf(form('floor=3'))).toBeUndefined();
    expect(recoveredSpeechOf({})).toBeUndefined();
  });

  it('are never digits: a Digits in the query is not taken', () => {
    expect(recoveredSpeechOf(form(`heardAt=${AT}&Digits=9&SpeechResult=nine`))).toMatchObject({ type: 'SPEECH', text: 'nine' });
  });

  it('refuse a malformed time, and a redirect that carries no words', () => {
    expect(refusal(() => recoveredSpeechOf(form('heardAt=soon&SpeechResult=hi')))).toBe('heardAt is malformed');
    expect(refusal(() => recoveredSpeechOf(form('heardAt=-1&SpeechResult=hi')))).toBe('heardAt is malformed');
    expect(refusal(() => recoveredSpeechOf(form(`heardAt=${'9'.repeat(16)}&SpeechResult=hi`)))).toBe('heardAt is malformed');
    expect(refusal(() => recoveredSpeechOf(form(`heardAt=${AT}`)))).toBe('SpeechResult is missing from a recovery redirect');
    expect(refusal(() => recoveredSpeechOf(form(`heardAt=${AT}&SpeechResult=%00`)))).toBe('SpeechResult is missing from a recovery redirect');
    expect(refusal(() => recoveredSpeechOf({ heardAt: [String(AT), String(AT)], SpeechResult: 'hi' }))).toBe('heardAt must appear once');
  });
});

describe('/continue', () => {
  it('is PLAYED after the first pieces of a reply (the ?played=1 of their <Redirect>)', () => {
    expect(playedEventOf(form('played=1'), AT)).toStrictEqual({ type: 'PLAYED', at: AT });
    expect(playedEventOf(form('attempt=2&played=1'), AT)).toStrictEqual({ type: 'PLAYED', at: AT });
  });

  it('is no event after a hold or a recovery: the call is picked up where it is', () => {
    expect(playedEventOf({}, AT)).toBeUndefined();
    expect(playedEventOf(form('attempt=1'), AT)).toBeUndefined();
    expect(playedEventOf(form('played=0'), AT)).toBeUndefined();
    expect(playedEventOf(form('played=true'), AT)).toBeUndefined();
  });
});

describe('the floor a <Gather> result answers', () => {
  it('is the number in its action URL, and none for a URL without one', () => {
    expect(floorOf(form('floor=0'))).toBe(0);
    expect(floorOf(form('floor=12'))).toBe(12);
    expect(floorOf({})).toBeUndefined();
  });

  it('refuses anything else', () => {
    for (const floor of ['', '-1', '1.5', 'one', '1234567', ' 1']) {
      expect(refusal(() => floorOf({ floor }))).toBe('floor is malformed');
    }
    expect(refusal(() => floorOf({ floor: ['1', '2'] }))).toBe('floor must appear once');
  });
});

describe('the count of service failures in a row', () => {
  it("is the retry URL's attempt, 1 to 9", () => {
    expect(serviceFailuresOf(form('attempt=1'))).toBe(1);
    expect(serviceFailuresOf(form('attempt=3&played=1'))).toBe(3);
    expect(serviceFailuresOf(form('attempt=9'))).toBe(9);
  });

  it('is 0 for a request that is no retry, or whose attempt is not a count (it only decides what the caller hears)', () => {
    for (const attempt of ['0', '10', '-1', '1.5', 'two', '']) expect(serviceFailuresOf({ attempt })).toBe(0);
    expect(serviceFailuresOf({})).toBe(0);
  });
});

describe('a status callback', () => {
  const callback = (status: string, extra = '') =>
    form(
      `${VOICE_REQUEST.replace('CallStatus=in-progress', `CallStatus=${status}`)}` +
        `&Timestamp=Thu%2C+01+Jan+2026+00%3A00%3A42+%2B0000&CallbackSource=call-progress-events&SequenceNumber=0${extra}`,
    );

  it('is HANGUP with the duration when the call is over', () => {
    expect(statusEventOf(callback('completed', '&CallDuration=42'), AT)).toStrictEqual({ type: 'HANGUP', status: 'completed', durationSec: 42, at: AT });
    for (const status of ['busy', 'failed', 'no-answer', 'canceled']) {
      expect(statusEventOf(callback(status, '&CallDuration=0'), AT)).toStrictEqual({ type: 'HANGUP', status, durationSec: 0, at: AT });
    }
  });

  it('is HANGUP without a duration when Twilio sends none or one that is not a count of seconds', () => {
    expect(statusEventOf(callback('completed'), AT)).toStrictEqual({ type: 'HANGUP', status: 'completed', at: AT });
    expect(statusEventOf(callback('completed', '&CallDuration=4.2'), AT)).toStrictEqual({ type: 'HANGUP', status: 'completed', at: AT });
    expect(statusEventOf(callback('completed', '&CallDuration=12345678'), AT)).toStrictEqual({ type: 'HANGUP', status: 'completed', at: AT });
  });

  it('is nothing while the call goes on (queued, ringing, in-progress)', () => {
    for (const status of ['queued', 'ringing', 'in-progress']) expect(statusEventOf(callback(status), AT)).toBeUndefined();
  });

  it('refuses a missing or malformed CallStatus', () => {
    expect(refusal(() => statusEventOf({ CallSid: CALL_SID }, AT))).toBe('CallStatus is missing or malformed');
    expect(refusal(() => statusEventOf(callback('Completed'), AT))).toBe('CallStatus is missing or malformed');
    expect(refusal(() => statusEventOf(callback(''), AT))).toBe('CallStatus is missing or malformed');
    expect(refusal(() => statusEventOf({ CallStatus: 'x'.repeat(21) }, AT))).toBe('CallStatus is missing or malformed');
    expect(refusal(() => statusEventOf({ CallStatus: ['completed', 'completed'] }, AT))).toBe('CallStatus must appear once');
  });
});
