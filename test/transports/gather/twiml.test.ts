/**
 * The `<Gather>` transport's output translator: machine state → TwiML, golden.
 * Every view is one the machine itself reaches (driven with its pure transitions,
 * the actors' results given as the events they would send), rendered with a
 * real audio URL signer at a fixed time, so each document is exactly what Twilio
 * would get. The goldens live in ./golden/*.xml and were checked by eye against
 * Twilio's TwiML reference:
 * - https://www.twilio.com/docs/voice/twiml/gather (input, numDigits, speechTimeout,
 *   action, method, actionOnEmptyResult; <Say>, <Play>, <Pause> nested)
 * - https://www.twilio.com/docs/voice/twiml/redirect, /play, /say, /pause, /hangup
 *
 * No XSD validator is installed here (no xmllint, none in node_modules), so the
 * documents are not validated against Twilio's XSD; instead each is checked
 * against the elements, attributes and integer types that XSD declares for the
 * verbs used (TwilioDevEd/twiml-generator, twiml_generator/xsd/
 * twiml_v20100401_twilioRealtimeCallSchema.xsd at 7fbfd540).
 */
import { describe, expect, it } from 'vitest';
import type { SnapshotFrom } from 'xstate';
import { callMachine, LIMITS, PHRASES, type CallEvent, type CallMachine } from '../../../machines/call.machine.ts';
import type { CallView } from '../../../src/engine/call-engine.ts';
import { PureSteps } from '../../../src/engine/pure-steps.ts';
import { parseTwiml } from '../../../src/phone/twilio-caller.ts';
import { createAudioUrlSigner } from '../../../src/speech/audio-url.ts';
import { recoveredSpeechOf, serviceFailuresOf } from '../../../src/transports/gather/events.ts';
import { renderCallTwiml, renderRecovery, renderUnknownCall, type RenderOptions } from '../../../src/transports/gather/twiml.ts';

const CALL_SID = 'CA0123456789abcdef0123456789abcdef';
const BASE_URL = 'https://voice.example.com';
const T0 = 1_767_225_600_000;
const signer = createAudioUrlSigner({ secret: 'golden-secret', ttlSec: 600, now: () => T0 });
const OPTIONS: RenderOptions = { baseUrl: BASE_URL, signAudio: (path) => signer.sign(path) };
const HOLD_AUDIO = '/audio/phrase/hold';
const piece = (key: string) => `/audio/call/${CALL_SID}/${key}`;

type Snapshot = SnapshotFrom<CallMachine>;
const pure = new PureSteps(callMachine);

/** A call driven by the machine's own transitions; actor results are the events their actors send. */
function call(...events: Array<CallEvent | { type: `xstate.done.actor.${string}`; output: unknown }>): Snapshot {
  let snapshot = pure.initial({ callSid: CALL_SID, from: '+14155551234', to: '+16175551212', at: T0, agentTimeoutMs: 8_000 });
  for (const event of events) snapshot = pure.next(snapshot, event as CallEvent);
  return snapshot;
}
const view = (snapshot: Snapshot, pending?: CallEvent): CallView => ({
  state: typeof snapshot.value === 'string' ? snapshot.value : JSON.stringify(snapshot.value),
  context: snapshot.context,
  ...(pending ? { pending } : {}),
});

const greeted = { type: 'xstate.done.actor.voice', output: { audio: '/audio/phrase/greeting', at: T0 + 100 } } as const;
const asked = { type: 'SPEECH', text: 'What time do you open?', confidence: 0.92, at: T0 + 5_000 } as const;
const answered = { type: 'xstate.done.actor.agent', output: { text: 'We open at nine.', firstChunkAt: T0 + 5_300, at: T0 + 5_400 } } as const;
const firstPieces = {
  type: 'xstate.done.actor.voice',
  output: { at: T0 + 5_600, pieces: [{ text: 'We open at nine.', audio: piece('t0') }], more: true },
} as const;

async function golden(name: string, twiml: string) {
  await expect(twiml).toMatchFileSnapshot(`./golden/${name}.xml`);
  expect(twimlProblems(twiml)).toStrictEqual([]);
}

describe('the TwiML of a call state', () => {
  it('listening to a phrase that was voiced: <Play> inside a speech-and-key <Gather> naming its floor', async () => {
    const listening = call(greeted);
    expect(listening.value).toBe('listening');
    await golden('listening-phrase-audio', renderCallTwiml(view(listening), OPTIONS));
  });

  it("listening to a phrase the phone reads: <Say> in the configured voice", async () => {
    const reprompted = call(greeted, { type: 'SILENCE', at: T0 + 9_000 }, { type: 'xstate.done.actor.voice', output: { at: T0 + 9_100 } });
    expect([reprompted.value, reprompted.context.prompt.text, reprompted.context.floor]).toStrictEqual(['listening', PHRASES.reprompt, 2]);
    await golden('listening-phrase-text', renderCallTwiml(view(reprompted), { ...OPTIONS, sayVoice: 'Polly.Joanna' }));
  });

  it('listening to the last pieces of a reply: each voiced piece a <Play>, each run of unvoiced ones one <Say>, in order', async () => {
    const pieces = [
      { text: 'We open at nine.', audio: piece('t0') },
      { text: 'On Sundays' },
      { text: 'we open at ten.' },
      { text: 'See you soon!', audio: piece('t0p3') },
      { text: 'Anything else?' },
    ];
    const listening = call(greeted, asked, answered, { type: 'xstate.done.actor.voice', output: { at: T0 + 5_600, pieces } });
    expect(listening.value).toBe('listening');
    await golden('listening-reply-pieces', renderCallTwiml(view(listening), OPTIONS));
  });

  it('replying: the first pieces outside any <Gather>, then a <Redirect> marked played=1', async () => {
    const replying = call(greeted, asked, answered, firstPieces);
    expect(replying.value).toBe('replying');
    await golden('replying', renderCallTwiml(view(replying), OPTIONS));
  });

  it('a slow turn, the first wait: the hold line, as audio once it is voiced, else read; then back to /continue', async () => {
    const waiting = call(greeted, asked, { type: 'SLOW', at: T0 + 8_000 });
    expect([waiting.value, waiting.context.filler]).toStrictEqual(['thinking', 'hold']);
    await golden('wait-hold-audio', renderCallTwiml(view(waiting), { ...OPTIONS, holdAudio: HOLD_AUDIO }));
    await golden('wait-hold-text', renderCallTwiml(view(waiting), OPTIONS));
  });

  it('a slow turn, a later wait: a one-second <Pause>, then back to /continue', async () => {
    const waiting = call(greeted, asked, { type: 'SLOW', at: T0 + 8_000 }, { type: 'SLOW', at: T0 + 11_000 });
    expect([waiting.value, waiting.context.filler]).toStrictEqual(['thinking', 'pause']);
    // The hold audio being ready changes nothing: the machine said pause.
    await golden('wait-pause', renderCallTwiml(view(waiting), { ...OPTIONS, holdAudio: HOLD_AUDIO }));
  });

  it('a wait with a PLAYED still to apply keeps asking with it (/continue?played=1)', async () => {
    // The first pieces have played, another instance is still voicing the rest: the reply is audible, so a pause.
    const waiting = call(greeted, asked, answered, firstPieces, { type: 'PLAYED', at: T0 + 7_000 }, { type: 'SLOW', at: T0 + 10_000 });
    expect([waiting.value, waiting.context.filler]).toStrictEqual(['speaking', 'pause']);
    await golden('wait-pending-played', renderCallTwiml(view(waiting, { type: 'PLAYED', at: T0 + 7_000 }), OPTIONS));
  });

  it('terminating: the closing line, then <Hangup/>', async () => {
    const ending = call(greeted, { type: 'SPEECH', text: 'Goodbye!', at: T0 + 5_000 }, { type: 'xstate.done.actor.voice', output: { audio: '/audio/phrase/goodbye', at: T0 + 5_100 } });
    expect([ending.value, ending.context.prompt.text]).toStrictEqual(['terminating', PHRASES.goodbye]);
    await golden('terminating', renderCallTwiml(view(ending), OPTIONS));
  });

  it('ended: only <Hangup/>', async () => {
    const ended = call(greeted, { type: 'HANGUP', status: 'completed', durationSec: 12, at: T0 + 12_000 });
    expect(ended.value).toBe('ended');
    await golden('ended', renderCallTwiml(view(ended), OPTIONS));
  });
});

describe('the recovery TwiML (the service failed to answer)', () => {
  const speech = { text: 'I would like to book a table for two', confidence: 0.87, at: T0 + 5_000 };

  it("keeps the caller on the line with the machine's line and retries the caller's words at /speech-result", async () => {
    await golden('recovery-1-speech', renderRecovery(1, { baseUrl: BASE_URL }, speech));
  });

  it('retries a PLAYED it could not take at /continue, still marked played=1', async () => {
    await golden('recovery-2-played', renderRecovery(2, { baseUrl: BASE_URL }, undefined, true));
  });

  it('retries a plain pick-up at /continue', async () => {
    await golden('recovery-3', renderRecovery(LIMITS.serviceFailures, { baseUrl: BASE_URL, sayVoice: 'Polly.Joanna' }));
  });

  it('hangs up with the machine\u2019s closing line after too many failures in a row, whatever was pending', async () => {
    const last = renderRecovery(LIMITS.serviceFailures + 1, { baseUrl: BASE_URL }, speech, true);
    await golden('recovery-4', last);
    expect(last).toContain(PHRASES.goodbyeFailures);
  });

  it('counts up: the retry URL carries the attempt the next failure reads back', () => {
    for (let failures = 1; failures <= LIMITS.serviceFailures; failures++) {
      const next = retryQuery(renderRecovery(failures, { baseUrl: BASE_URL }, speech));
      expect(serviceFailuresOf(next)).toBe(failures);
    }
  });

  it("carries the caller's words so that /speech-result reads back the very event", () => {
    const spoken = { text: 'Caf\u00e9 & cr\u00e8me br\u00fbl\u00e9e? 100% \u{1F600} yes+no', confidence: 0.5, at: T0 + 1 };
    expect(recoveredSpeechOf(retryQuery(renderRecovery(1, { baseUrl: BASE_URL }, spoken)))).toStrictEqual({ type: 'SPEECH', ...spoken });
  });

  it('keeps the retry URL within Twilio\u2019s 4,000 characters, cutting the words between whole characters', () => {
    // https://www.twilio.com/docs/api/errors/21609 (URL longer than 4,000 characters)
    const words = '\u00e9t\u00e9 \u{1F600} '.repeat(600);
    const url = redirectOf(renderRecovery(1, { baseUrl: BASE_URL }, { text: words, at: T0 }));
    expect(url.length).toBeLessThanOrEqual(4_000);
    expect(url.length).toBeGreaterThan(3_980);
    const heard = recoveredSpeechOf(Object.fromEntries(new URL(url).searchParams));
    expect(heard?.type === 'SPEECH' && heard.text.isWellFormed() && words.startsWith(heard.text)).toBe(true);
  });

  it('falls back to picking the call up when not one character of the words fits', () => {
    const baseUrl = `https://voice.example.com/${'p'.repeat(3_934)}`;
    const url = redirectOf(renderRecovery(1, { baseUrl }, { text: 'hello', at: T0 }));
    expect(url).toBe(`${baseUrl}/continue?attempt=1`);
    expect(url.length).toBeLessThanOrEqual(4_000);
  });
});

describe('a call the service does not know', () => {
  it("gets the machine's line and <Hangup/>", async () => {
    await golden('unknown-call', renderUnknownCall({}));
  });
});

type XmlNode = ReturnType<typeof parseTwiml>[number];

function redirectOf(twiml: string): string {
  const redirect = parseTwiml(twiml).find((node) => 'Redirect' in node);
  const text = (redirect?.Redirect as XmlNode[] | undefined)?.[0]?.['#text'];
  if (typeof text !== 'string') throw new Error(`no <Redirect> in ${twiml}`);
  return text;
}

function retryQuery(twiml: string): Record<string, string> {
  return Object.fromEntries(new URL(redirectOf(twiml)).searchParams);
}

/**
 * What Twilio's TwiML XSD declares for the verbs these documents use: the
 * children each may hold, its attributes, and which of them are `xs:int`
 * (twiml_v20100401_twilioRealtimeCallSchema.xsd: responseType, GatherType,
 * SayType, PlayType, PauseType, RedirectType, HangupType; Say's voiceType pattern).
 */
const XSD: Record<string, { children: string[]; attributes: string[]; integers?: string[]; text?: boolean }> = {
  Response: { children: ['Play', 'Say', 'Gather', 'Dial', 'Record', 'Annotate', 'Hangup', 'Redirect', 'Pause', 'Sms', 'Publish', 'Reject', 'Enqueue', 'Echo', 'Start'], attributes: ['version'] },
  Gather: {
    children: ['Play', 'Say', 'Pause'],
    attributes: ['numDigits', 'finishOnKey', 'actionOnEmptyResult', 'method', 'action', 'timeout', 'grammar', 'grammarUrl', 'input', 'speechTimeout', 'partialResultCallback', 'partialResultCallbackMethod', 'hints', 'language', 'bargeIn', 'profanityFilter', 'maxSpeechTime', 'speechModel', 'secure'],
    integers: ['numDigits', 'timeout', 'maxSpeechTime'],
  },
  Say: { children: [], attributes: ['loop', 'voice', 'language', 'rate'], integers: ['loop'], text: true },
  Play: { children: [], attributes: ['loop', 'digits'], integers: ['loop'], text: true },
  Pause: { children: [], attributes: ['length', 'timeout', 'until'], integers: ['length', 'timeout'] },
  Redirect: { children: [], attributes: ['method'], text: true },
  Hangup: { children: ['Group'], attributes: [] },
};
const SAY_VOICE = /^(man|woman|male|female|eve|brian|Polly\.[a-zA-Z]+)$/;

function twimlProblems(twiml: string): string[] {
  const problems: string[] = [];
  const walk = (name: string, node: XmlNode, path: string) => {
    const rule = XSD[name];
    if (!rule) return void problems.push(`${path}: <${name}> is not a verb this check knows`);
    for (const [attribute, value] of Object.entries(node[':@'] ?? {})) {
      if (!rule.attributes.includes(attribute)) problems.push(`${path}: ${attribute} is not an attribute of <${name}>`);
      if (rule.integers?.includes(attribute) && !/^-?\d+$/.test(value)) problems.push(`${path}: ${attribute}="${value}" is not an integer`);
      if (name === 'Say' && attribute === 'voice' && !SAY_VOICE.test(value)) problems.push(`${path}: voice="${value}" is not a voice`);
    }
    for (const child of (node[name] as XmlNode[] | undefined) ?? []) {
      const childName = Object.keys(child).find((key) => key !== ':@')!;
      if (childName === '#text') {
        if (!rule.text && String(child['#text']).trim() !== '') problems.push(`${path}: <${name}> holds text`);
        continue;
      }
      if (!rule.children.includes(childName)) problems.push(`${path}: <${childName}> may not be inside <${name}>`);
      walk(childName, child, `${path}/${childName}`);
    }
  };
  walk('Response', { Response: parseTwiml(twiml) }, 'Response');
  return problems;
}
