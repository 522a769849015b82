/**
 * What the benchmark's callers say and what the fake agent answers.
 *
 * Every call is about its own order number, and every sentence of every answer
 * names it. That is what lets the benchmark tell, from the fakes' own request log,
 * which call each ElevenLabs request was for (the text or the `previous_text`
 * always holds the number), so the service's overhead can be measured as a
 * webhook's time minus the time it spent waiting on the fakes of its own call.
 *
 * The answers are written the way a voice agent answers: two to four sentences,
 * 45 to 55 words, some opening with a short sentence, one with a long sentence that
 * has to be cut at a comma.
 */
import { SpeakablePieces } from '../src/speech/speakable-pieces.ts';

/** Words per token, OpenAI's rule of thumb; the fake agent streams one word per chunk. */
export const WORDS_PER_TOKEN = 0.75;

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

/** The order number a caller's line, an agent answer or a piece of one speaks of. */
export function orderIn(text: string | undefined): number | undefined {
  const match = text === undefined ? null : /order (\d+)/.exec(text);
  return match ? Number(match[1]) : undefined;
}

/** Which answer the agent gives: the caller's order number, and the turn from the history length. */
export function answerForRequest(request: { message: string; history?: unknown[] }): string {
  const order = orderIn(request.message) ?? 0;
  return answerFor(order, Math.floor((request.history?.length ?? 0) / 2));
}

/** The fake agent's pause between words at a rate in tokens per second. */
export function wordIntervalMs(tokensPerSec: number): number {
  return 1000 / (tokensPerSec * WORDS_PER_TOKEN);
}

/** The first piece the service voices when the agent streams `answer` a word at a time. */
export function firstPieceText(answer: string): string {
  const pieces = new SpeakablePieces();
  for (const word of answer.split(' ')) {
    const [first] = pieces.push(`${word} `);
    if (first) return first;
  }
  return pieces.end()[0] ?? '';
}

export function wordCount(text: string): number {
  return text.split(/\s+/).filter(Boolean).length;
}
