/**
 * Whole calls against the running service, the way Twilio places them: a simulated
 * Twilio (src/phone/twilio-caller.ts) per call, from its own number, playing every
 * `<Play>` and `<Say>` for as long as it lasts so that a `<Redirect>` comes back
 * when it would on a real call.
 *
 * What one turn yields:
 * - first audio: from sending `/speech-result` (the caller has finished speaking)
 *   to the moment the first audio of the answer can play. Twilio plays a `<Play>`
 *   only once its file is downloaded, and the `<Play>`s nested in a `<Gather>`
 *   only once all of them are, so this is when the simulated Twilio has done that;
 *   the time it then spends playing is not counted.
 * - gaps: silences between consecutive sounds of the answer (a `/continue` round
 *   trip, a download, or waiting for audio that is not ready).
 * And every webhook's answer time as Twilio sees it, by route.
 */
import { PHRASES } from '../machines/call.machine.ts';
import { SimulatedCall, type Heard } from '../src/phone/twilio-caller.ts';
import { fakeAudioFor } from '../test/fakes/elevenlabs-server.ts';
import { AUTH_TOKEN, clock, PUBLIC_BASE_URL } from './processes.ts';
import { callerLine, GOODBYE_LINE, orderNumberOf } from './scenario.ts';

/** How fast a voice speaks, characters per second (about 150 words a minute). */
const SPOKEN_CHARS_PER_SEC = 15;

export interface TurnTiming {
  order: number;
  turn: number;
  /** `/speech-result` sent, and the turn over (the whole answer voiced, the caller's turn to speak). */
  startedAt: number;
  endedAt: number;
  /** The first sound of the answer can play (undefined: the caller never heard one). */
  firstReplyAt?: number;
  /** The first sound of any kind (the hold acknowledgement, if the answer is late). */
  firstSoundAt?: number;
  /** Sounds of the answer played one after another (pieces), and hold sounds in the turn. */
  replySounds: number;
  holdSounds: number;
  /** Silences between sounds after the first sound of the answer, ms. */
  gaps: number[];
  /** Bytes of answer audio Twilio downloaded. */
  audioBytes: number;
}

export interface CallsResult {
  turns: TurnTiming[];
  /** Every webhook's answer time as Twilio sees it (request sent to answer read), ms, by path. */
  webhookMs: Map<string, number[]>;
  failures: string[];
  wallMs: number;
}

export interface CallsOptions {
  serviceUrl: string;
  turns: number;
  /** Playback speed: 1 plays in real time, 0 does not wait at all. */
  playback: number;
  /** How long the caller speaks before Twilio posts their words (think time plus speech). */
  callerSpeaksMs: number;
  /** The first call's index, so that runs never share numbers. */
  firstCallIndex: number;
  /** The service's ELEVEN_OUTPUT_FORMAT: how many bytes of the fake's audio a character of text is. */
  outputFormat: string;
  /** Counts calls in progress (for memory per active call). */
  progress?: { active: number };
  /** No question is asked after this time (clock()); the caller says goodbye instead. */
  until?: number;
}

/** `calls` concurrent calls, their starts spread over `rampMs`. */
export async function runCalls(options: CallsOptions & { calls: number; rampMs: number }): Promise<CallsResult> {
  return collect((result) =>
    Promise.all(
      Array.from({ length: options.calls }, async (_, index) => {
        await sleep((options.rampMs * index) / Math.max(1, options.calls));
        if (options.progress) options.progress.active++;
        await placeCall(options, options.firstCallIndex + index, result);
        if (options.progress) options.progress.active--;
      }),
    ),
  );
}

/** `callers` callers placing call after call until `durationMs` has passed (then each says goodbye). */
export async function runCallsFor(options: CallsOptions & { callers: number; durationMs: number }): Promise<CallsResult> {
  const until = clock() + options.durationMs;
  let next = options.firstCallIndex;
  return collect((result) =>
    Promise.all(
      Array.from({ length: options.callers }, async () => {
        while (clock() < until) await placeCall({ ...options, until }, next++, result);
      }),
    ),
  );
}

async function collect(run: (result: CallsResult) => Promise<unknown>): Promise<CallsResult> {
  const result: CallsResult = { turns: [], webhookMs: new Map(), failures: [], wallMs: 0 };
  const started = clock();
  await run(result);
  result.wallMs = clock() - started;
  return result;
}

/** One call: greeting, `turns` questions, goodbye, status callback; a failure is noted and ends the call. */
async function placeCall(options: CallsOptions, index: number, result: CallsResult) {
  const order = orderNumberOf(index);
  const heard: Array<{ at: number; heard: Heard }> = [];
  const call = new SimulatedCall({
    publicBaseUrl: PUBLIC_BASE_URL,
    targetBaseUrl: options.serviceUrl,
    authToken: AUTH_TOKEN,
    from: callerNumber(index),
    fetch: timedFetch(result.webhookMs),
    onHear: (h) => heard.push({ at: clock(), heard: h }),
    playbackMs: (h) => playbackMs(h, options.outputFormat) * options.playback,
    maxRedirectsPerTurn: 200,
  });
  try {
    await call.dial();
    for (let turn = 0; turn < options.turns && !(options.until !== undefined && clock() >= options.until); turn++) {
      await sleep(options.callerSpeaksMs);
      const firstHeard = heard.length;
      const startedAt = clock();
      await call.say(callerLine(order, turn));
      result.turns.push(analyseTurn(order, turn, startedAt, heard.slice(firstHeard), options));
    }
    await sleep(options.callerSpeaksMs);
    await call.say(GOODBYE_LINE);
    await call.hangUp('completed');
  } catch (error) {
    result.failures.push(`call ${index}: ${error instanceof Error ? error.message : String(error)}`);
  }
}

function analyseTurn(order: number, turn: number, startedAt: number, sounds: Array<{ at: number; heard: Heard }>, options: CallsOptions): TurnTiming {
  const timing: TurnTiming = {
    order,
    turn,
    startedAt,
    endedAt: clock(),
    replySounds: sounds.filter((s) => isReply(s.heard)).length,
    holdSounds: sounds.filter((s) => isHold(s.heard)).length,
    gaps: [],
    audioBytes: sounds.reduce((bytes, { heard }) => bytes + (heard.verb === 'Play' && isReply(heard) ? heard.bytes : 0), 0),
  };
  if (sounds[0]) timing.firstSoundAt = sounds[0].at;
  const first = sounds.findIndex((s) => isReply(s.heard));
  if (first >= 0) {
    timing.firstReplyAt = sounds[first]!.at;
    for (let k = first; k + 1 < sounds.length; k++) {
      const endOfSound = sounds[k]!.at + playbackMs(sounds[k]!.heard, options.outputFormat) * options.playback;
      timing.gaps.push(Math.max(0, sounds[k + 1]!.at - endOfSound));
    }
  }
  return timing;
}

/** Every call from its own number, as on a real line (the service limits webhooks per caller). */
export function callerNumber(index: number): string {
  return `+1555${String(index % 10_000_000).padStart(7, '0')}`;
}

/** A sound of the agent's answer: its synthesised audio, or its words read by the phone's voice. */
function isReply(heard: Heard): boolean {
  if (heard.verb === 'Play') return heard.url.includes('/audio/call/');
  return heard.verb === 'Say' && !(Object.values(PHRASES) as string[]).includes(heard.text);
}

function isHold(heard: Heard): boolean {
  if (heard.verb === 'Play') return heard.url.includes('/audio/phrase/hold');
  return heard.verb === 'Pause' || (heard.verb === 'Say' && heard.text === PHRASES.hold);
}

/**
 * How long a sound lasts on the phone, ms: the fake's audio stands for its text
 * spoken at SPOKEN_CHARS_PER_SEC. Its audio is a fixed prefix and a number of bytes
 * per character of text, in each format; the service adds a 58-byte WAV header
 * to μ-law.
 */
function playbackMs(heard: Heard, outputFormat: string): number {
  const msPerChar = 1000 / SPOKEN_CHARS_PER_SEC;
  switch (heard.verb) {
    case 'Say':
    case 'ConversationRelay':
      return heard.text.length * msPerChar;
    case 'Pause':
      return heard.seconds * 1000;
    case 'Hangup':
      return 0;
    case 'Play': {
      const one = fakeAudioFor('a', outputFormat).length;
      const perChar = fakeAudioFor('ab', outputFormat).length - one;
      const prefix = (heard.contentType.includes('wav') ? 58 : 0) + one - perChar;
      return Math.max(0, Math.floor((heard.bytes - prefix) / perChar)) * msPerChar;
    }
  }
}

/** `fetch` that notes each webhook's time, from the request sent to its answer read. */
function timedFetch(into: Map<string, number[]>): typeof fetch {
  return async (input, init) => {
    const startedAt = clock();
    const response = await fetch(input, init);
    const body = await response.arrayBuffer();
    if (init?.method === 'POST') {
      const path = new URL(String(input)).pathname;
      if (!into.has(path)) into.set(path, []);
      into.get(path)!.push(clock() - startedAt);
    }
    const empty = [101, 204, 205, 304].includes(response.status);
    return new Response(empty ? null : body, { status: response.status, statusText: response.statusText, headers: response.headers });
  };
}

function sleep(ms: number): Promise<void> {
  return ms > 0 ? new Promise((resolve) => setTimeout(resolve, ms)) : Promise.resolve();
}
