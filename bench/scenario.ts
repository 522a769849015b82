/**
 * What the benchmark's callers say and what the fake agent answers.
 *
 * Every call is about its own order number, which the fake agent reads from the
 * caller's words, so each call gets its own answers (and the service's caches
 * none of another call's).
 *
 * The answers are written the way a voice agent answers: two to four sentences,
 * 45 to 55 words, some opening with a short sentence, one with a long sentence that
 * has to be cut at a comma.
 */
import { SpeakablePieces } from '../src/speech/speakable-pieces.ts';

/** Words per token, OpenAI's rule of thumb; the fake agent streams one word per chunk. */
const WORDS_PER_TOKEN = 0.75;

/** How fast the fakes answer. */
export interface FakesLatency {
  /** Time to the agent's first token. */
  agentFirstMs: number;
  tokensPerSec: number;
  /** ElevenLabs' time to first byte. */
  ttsFirstByteMs: number;
  /** How fast ElevenLabs streams audio after the first byte, in characters of text per second; 0: all at once. */
  ttsCharsPerSec: number;
  /** The output format the service asks for (the fake's audio size per character depends on it). */
  outputFormat: string;
}

const ANSWERS: ReadonlyArray<(order: number) => string> = [
  (n) =>
    `Sure, I can help with order ${n}. Order ${n} was placed on Monday and it is being packed at our warehouse right now. ` +
    `Once order ${n} ships, you will get a text message with a tracking link. Is there anything else about order ${n} I can check for you?`,
  (n) =>
    `Order ${n} should arrive on Thursday. The courier usually delivers between nine in the morning and five in the afternoon, ` +
    `and the driver will call you about half an hour before reaching you with order ${n}. ` +
    `If nobody is home, order ${n} goes to the pickup point on Main Street.`,
  (n) =>
    `Yes, you can still change the address for order ${n}. Just tell me the new street, house number and postcode, ` +
    `and I will update order ${n} right away. The change for order ${n} can take up to an hour to show on the tracking page.`,
];

const QUESTIONS: ReadonlyArray<(order: number) => string> = [
  (n) => `Hi, I'm calling about my order ${n}, where is it?`,
  (n) => `When will order ${n} arrive?`,
  (n) => `Can I change the delivery address of order ${n}?`,
];

/** The key the service is configured with and the fake ElevenLabs checks. */
export const ELEVENLABS_KEY = 'bench-elevenlabs-key-abcdef';

export const GOODBYE_LINE = 'Great, thanks, goodbye!';

export function orderNumberOf(callIndex: number): number {
  return 4_000 + callIndex;
}

export function callerLine(order: number, turn: number): string {
  return `${QUESTIONS[turn % QUESTIONS.length]!(order)} (question ${turn + 1})`;
}

export function answerFor(order: number, turn: number): string {
  return ANSWERS[turn % ANSWERS.length]!(order);
}

/** Which answer the agent gives: the caller's order number, and the turn from the history length. */
export function answerForRequest(request: { message: string; history?: unknown[] }): string {
  const order = Number(/order (\d+)/.exec(request.message)?.[1] ?? 0);
  return answerFor(order, Math.floor((request.history?.length ?? 0) / 2));
}

/** The fake agent's pause between words at a rate in tokens per second. */
export function wordIntervalMs(tokensPerSec: number): number {
  return 1000 / (tokensPerSec * WORDS_PER_TOKEN);
}

export function wordCount(text: string): number {
  return text.split(/\s+/).filter(Boolean).length;
}

/**
 * The soonest the caller can hear `answer` with these fakes: the agent's time to
 * write what is voiced first (the first piece, or the whole answer the old way),
 * then ElevenLabs' time to deliver its audio. Nothing can play sooner.
 */
export function floorMs(answer: string, mode: 'pieces' | 'whole', latency: FakesLatency): number {
  const voiced = mode === 'whole' ? answer : firstPieceText(answer);
  const agent = latency.agentFirstMs + (wordCount(voiced) - 1) * wordIntervalMs(latency.tokensPerSec);
  const speech = latency.ttsFirstByteMs + (latency.ttsCharsPerSec > 0 ? (voiced.length / latency.ttsCharsPerSec) * 1000 : 0);
  return agent + speech;
}

/** The first piece the service voices when the agent streams `answer` a word at a time. */
function firstPieceText(answer: string): string {
  const pieces = new SpeakablePieces();
  for (const word of answer.split(' ')) {
    const [first] = pieces.push(`${word} `);
    if (first) return first;
  }
  return pieces.end()[0] ?? '';
}
