/**
 * Whole calls against the running service, the way Twilio places them: a
 * simulated Twilio (src/phone/twilio-caller.ts) per call, playing every `<Play>`
 * and `<Say>` in real time so a `<Redirect>` comes back when it would on a real
 * call, with every request and every sound timed on the shared monotonic clock.
 *
 * What one turn yields:
 * - `firstReplyMs`: from sending `/speech-result` (the caller has finished
 *   speaking) to the moment the first audio of the answer can play. Twilio plays a
 *   `<Play>` only once its file is downloaded, and the `<Play>`s nested in a
 *   `<Gather>` only once all of them are, so this is when the simulated Twilio has
 *   done that; the time it then spends "playing" is not counted.
 * - `gaps`: silences between consecutive sounds of the answer (the time Twilio
 *   spends between the end of one sound and the start of the next: a `/continue`
 *   round trip, a download, or waiting for audio that is not ready).
 * - the webhooks it took, each with its own time, so run.ts can subtract the
 *   time the service spent waiting on the fakes of this call.
 */
import { subscribe } from 'node:diagnostics_channel';
import { PHRASES } from '../machines/call.machine.ts';
import { SimulatedCall, type Heard } from '../src/phone/twilio-caller.ts';
import { fakeAudioFor } from '../test/fakes/elevenlabs-server.ts';
import { AUTH_TOKEN, clock, PUBLIC_BASE_URL } from './processes.ts';
import { callerLine, GOODBYE_LINE, orderNumberOf } from './scenario.ts';

/** How fast a voice speaks, characters per second (about 150 words a minute). */
export const SPOKEN_CHARS_PER_SEC = 15;

export interface WebhookTiming {
  callSid: string;
  path: string;
  /** Twilio's idempotency token of the request: the service's own log names the webhook by it. */
  token: string;
  /** `fetch` called. */
  startedAt: number;
  /** The request fully written to the socket (undefined if the diagnostics channel missed it). */
  sentAt?: number;
  /** The answer read. */
  endedAt: number;
  body: string;
}

export interface TurnTiming {
  callSid: string;
  order: number;
  turn: number;
  /** `/speech-result` sent. */
  startedAt: number;
  /** The first sound of the answer can play (undefined: the caller never heard one). */
  firstReplyAt?: number;
  /** The first sound of any kind (the hold acknowledgement, if the answer is late). */
  firstSoundAt?: number;
  /** Sounds of the answer played one after another (pieces), and hold sounds in the turn. */
  replySounds: number;
  holdSounds: number;
  /** Silences between sounds after the first sound of the answer, ms. */
  gaps: number[];
  /** Bytes of answer audio Twilio downloaded, and their content type. */
  audioBytes: number;
  contentType?: string;
  webhooks: number;
}

export interface CallsResult {
  turns: TurnTiming[];
  webhooks: WebhookTiming[];
  failures: string[];
  wallMs: number;
}

export interface CallsOptions {
  serviceUrl: string;
  calls: number;
  turns: number;
  /** Playback speed: 1 plays in real time, 0 does not wait at all. */
  playback: number;
  /** How long the caller speaks before Twilio posts their words (think time plus speech). */
  callerSpeaksMs: number;
  /** Calls start spread over this long. */
  rampMs: number;
  /** The first call's order number offset, so several runs never share numbers. */
  firstCallIndex?: number;
  /** Counts calls in progress, for memory per active call. */
  progress?: { active: number };
}

export async function runCalls(options: CallsOptions): Promise<CallsResult> {
  const turns: TurnTiming[] = [];
  const webhooks: WebhookTiming[] = [];
  const failures: string[] = [];
  const started = clock();
  await Promise.all(
    Array.from({ length: options.calls }, async (_, index) => {
      await sleep((options.rampMs * index) / Math.max(1, options.calls));
      if (options.progress) options.progress.active++;
      try {
        await placeCall(options, (options.firstCallIndex ?? 0) + index, turns, webhooks);
      } catch (error) {
        failures.push(error instanceof Error ? error.message : String(error));
      } finally {
        if (options.progress) options.progress.active--;
      }
    }),
  );
  return { turns, webhooks, failures, wallMs: clock() - started };
}

async function placeCall(options: CallsOptions, index: number, turns: TurnTiming[], webhooks: WebhookTiming[]) {
  const order = orderNumberOf(index);
  const heard: Array<{ at: number; heard: Heard }> = [];
  const own: WebhookTiming[] = [];
  let callSid = '';
  const call = new SimulatedCall({
    publicBaseUrl: PUBLIC_BASE_URL,
    targetBaseUrl: options.serviceUrl,
    authToken: AUTH_TOKEN,
    from: callerNumber(index),
    fetch: timedFetch((timing) => own.push({ ...timing, callSid })),
    onHear: (h) => heard.push({ at: clock(), heard: h }),
    playbackMs: (h) => playbackMs(h) * options.playback,
    maxRedirectsPerTurn: 200,
  });
  callSid = call.callSid;
  await call.dial();
  for (let turn = 0; turn < options.turns; turn++) {
    await sleep(options.callerSpeaksMs);
    const firstWebhook = own.length;
    const firstHeard = heard.length;
    await call.say(callerLine(order, turn));
    turns.push(analyseTurn(callSid, order, turn, own.slice(firstWebhook), heard.slice(firstHeard), options.playback));
  }
  await sleep(options.callerSpeaksMs);
  await call.say(GOODBYE_LINE);
  await call.hangUp('completed');
  webhooks.push(...own);
}

function analyseTurn(
  callSid: string,
  order: number,
  turn: number,
  hooks: WebhookTiming[],
  sounds: Array<{ at: number; heard: Heard }>,
  playback: number,
): TurnTiming {
  const timing: TurnTiming = {
    callSid,
    order,
    turn,
    startedAt: hooks[0]?.startedAt ?? 0,
    replySounds: sounds.filter((s) => isReply(s.heard)).length,
    holdSounds: sounds.filter((s) => isHold(s.heard)).length,
    gaps: [],
    webhooks: hooks.length,
    audioBytes: 0,
  };
  for (const { heard } of sounds) {
    if (heard.verb !== 'Play' || !isReply(heard)) continue;
    timing.audioBytes += heard.bytes;
    timing.contentType = heard.contentType;
  }
  const first = sounds.findIndex((s) => isReply(s.heard));
  if (sounds[0]) timing.firstSoundAt = sounds[0].at;
  if (first >= 0) {
    timing.firstReplyAt = sounds[first]!.at;
    for (let k = first; k + 1 < sounds.length; k++) {
      const endOfSound = sounds[k]!.at + playbackMs(sounds[k]!.heard) * playback;
      timing.gaps.push(Math.max(0, sounds[k + 1]!.at - endOfSound));
    }
  }
  return timing;
}

export interface CapacityResult {
  turns: number;
  /** `/speech-result` to the answer's audio ready to play, per turn, ms. */
  turnMs: number[];
  failures: string[];
  wallMs: number;
}

/**
 * As many turns as `callers` callers get through in `durationMs`, nobody pausing:
 * no playback, no think time. Each caller starts a new call every `turnsPerCall`
 * turns so the conversation history stays the size of a real call's.
 */
export async function runTurnsFor(options: { serviceUrl: string; callers: number; durationMs: number; turnsPerCall: number; firstCallIndex: number }): Promise<CapacityResult> {
  const result: CapacityResult = { turns: 0, turnMs: [], failures: [], wallMs: 0 };
  const started = clock();
  const until = started + options.durationMs;
  let next = options.firstCallIndex;
  await Promise.all(
    Array.from({ length: options.callers }, async () => {
      while (clock() < until) {
        const index = next++;
        const order = orderNumberOf(index);
        const call = new SimulatedCall({
          publicBaseUrl: PUBLIC_BASE_URL,
          targetBaseUrl: options.serviceUrl,
          authToken: AUTH_TOKEN,
          from: callerNumber(index),
          maxRedirectsPerTurn: 200,
        });
        try {
          await call.dial();
          for (let turn = 0; turn < options.turnsPerCall && clock() < until; turn++) {
            const sent = clock();
            const heard = await call.say(callerLine(order, turn));
            if (!heard.heard.some(isReply)) throw new Error(`turn ${turn} of order ${order} heard no answer`);
            result.turnMs.push(clock() - sent);
            result.turns++;
          }
          await call.hangUp('completed');
        } catch (error) {
          result.failures.push(error instanceof Error ? error.message : String(error));
        }
      }
    }),
  );
  result.wallMs = clock() - started;
  return result;
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

const MULAW = audioLayout('ulaw_8000', 58);
const MP3 = audioLayout('mp3_44100_128', 0);

/** The fake ElevenLabs' audio: a fixed prefix and a number of bytes per character of text. */
function audioLayout(format: string, header: number) {
  const one = fakeAudioFor('a', format).length;
  const perChar = fakeAudioFor('ab', format).length - one;
  return { prefix: header + one - perChar, perChar };
}

/** How long a sound lasts on the phone, ms: the fake's audio stands for its text spoken at SPOKEN_CHARS_PER_SEC. */
export function playbackMs(heard: Heard): number {
  const perChar = 1000 / SPOKEN_CHARS_PER_SEC;
  switch (heard.verb) {
    case 'Say':
    case 'ConversationRelay':
      return heard.text.length * perChar;
    case 'Pause':
      return heard.seconds * 1000;
    case 'Hangup':
      return 0;
    case 'Play': {
      const layout = heard.contentType.includes('wav') ? MULAW : MP3;
      return Math.max(0, Math.floor((heard.bytes - layout.prefix) / layout.perChar)) * perChar;
    }
  }
}

const TOKEN_HEADER = 'i-twilio-idempotency-token';
/** When each webhook, by its token, was fully written to its socket (fetch's own diagnostics channels). */
const sentAtByToken = new Map<string, number>();
const tokenOfRequest = new WeakMap<object, string>();
subscribe('undici:request:create', (message) => {
  const { request } = message as { request: { headers: unknown } };
  const headers = Array.isArray(request.headers) ? (request.headers as unknown[]) : [];
  const at = headers.findIndex((h, i) => i % 2 === 0 && String(h).toLowerCase() === TOKEN_HEADER);
  if (at >= 0) tokenOfRequest.set(request, String(headers[at + 1]));
});
subscribe('undici:request:bodySent', (message) => {
  const token = tokenOfRequest.get((message as { request: object }).request);
  if (token !== undefined) sentAtByToken.set(token, clock());
});

/** `fetch` that notes when each webhook was sent and its answer fully read. */
function timedFetch(record: (timing: Omit<WebhookTiming, 'callSid'>) => void): typeof fetch {
  return async (input, init) => {
    const url = new URL(typeof input === 'string' ? input : input instanceof URL ? input.href : input.url);
    const token = new Headers(init?.headers).get(TOKEN_HEADER) ?? '';
    const startedAt = clock();
    const response = await fetch(input, init);
    const bytes = Buffer.from(await response.arrayBuffer());
    const endedAt = clock();
    if ((init?.method ?? 'GET') === 'POST') {
      const sentAt = sentAtByToken.get(token);
      sentAtByToken.delete(token);
      record({ path: url.pathname, token, startedAt, ...(sentAt !== undefined && sentAt >= startedAt ? { sentAt } : {}), endedAt, body: bytes.toString('utf8') });
    }
    const empty = [101, 204, 205, 304].includes(response.status);
    return new Response(empty ? null : bytes, { status: response.status, statusText: response.statusText, headers: response.headers });
  };
}

function sleep(ms: number): Promise<void> {
  return ms > 0 ? new Promise((resolve) => setTimeout(resolve, ms)) : Promise.resolve();
}
