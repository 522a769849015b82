/**
 * The conversation of one phone call, as an XState v5 machine.
 *
 * This file is the conversation: which state follows which, what the caller hears
 * and when the call ends. It does no I/O. The agent call and speech synthesis are
 * invoked actors (`askAgent`, `voicePrompt`) that the engine provides with
 * `machine.provide(...)`; every timestamp arrives on an event (`at`) or on an
 * actor's output, so the machine has no clock of its own and replays the same way
 * in production, in model-based tests and in the diagram exporter.
 *
 * It speaks in conversation terms and knows no transport: the caller spoke
 * (SPEECH), said nothing (SILENCE), pressed digits (DIGITS), spoke over the reply
 * after hearing some of it (INTERRUPT), hung up (HANGUP); the prompt finished
 * playing (PLAYED); the turn is slow (SLOW); the line to the caller was restored
 * after a break (RECONNECTED). A transport (`src/transports/gather`: Twilio's
 * `<Gather>` webhooks; `src/transports/relay`: ConversationRelay over a WebSocket)
 * translates its wire protocol into these events and the resulting state into its
 * own output, and decides nothing: every line the caller hears is one of PHRASES
 * or the agent's words, and what fills a wait (the hold line or a pause) is
 * `context.filler`, set here.
 *
 * An agent reply reaches the caller while the agent is still writing it. How
 * depends on the call's `replyDelivery`:
 * - `pieces` (`<Gather>`): the reply is voiced a sentence at a time; the caller
 *   hears the first as soon as it is voiced (`replying`), the transport reports it
 *   played (PLAYED), and the last pieces are heard while listening. Each pass
 *   through `speaking` voices the next pieces. While the caller hears the first
 *   pieces, `replying` waits for the agent to finish and stores the whole answer
 *   (`collectReply`), so whichever instance gets PLAYED voices the rest without
 *   asking the agent again.
 * - `streamed` (ConversationRelay): the agent's text goes to the caller as it is
 *   written, all within `speaking`; the caller may interrupt (INTERRUPT), and the
 *   turn then keeps only the words they heard.
 *
 * Deadlines are absolute times in context (`turn.deadlineAt`), checked when an
 * event arrives, never `after` delays: a restored actor does not re-arm `after`
 * timers (https://github.com/statelyai/xstate/issues/5331).
 *
 * @see https://stately.ai/docs/setup
 * @see https://stately.ai/docs/invoke
 */
import { assign, fromPromise, setup } from 'xstate';

/** Words that end a call when the caller says them (matched on whole words). */
export const GOODBYE_PHRASES = [
  'goodbye',
  'good bye',
  'bye',
  'bye bye',
  "that's all",
  'that is all',
  'hang up',
  'end the call',
  'end call',
  "i'm done",
  'i am done',
];

/** Every line the service says on its own account; the transport voices them. */
export const PHRASES = {
  greeting: "Hello! I'm your HeyAI assistant. How can I help you today?",
  reprompt: "Sorry, I didn't hear anything. Are you still there?",
  apology: "Sorry, I'm having trouble answering right now. Could you say that again?",
  /** The first time a caller waits on a slow turn (SLOW); later waits are pauses. */
  hold: 'One moment.',
  goodbye: 'Thank you for calling. Goodbye!',
  goodbyeSilence: "I haven't heard anything, so I'll hang up now. Goodbye!",
  goodbyeFailures: "Sorry, I can't help right now. Please call again later. Goodbye!",
  /** The call reached its turn limit (`maxTurns`). */
  goodbyeTurns: "We've covered a lot, so I'll end this call here. Please call again if you need anything else. Goodbye!",
  /** The service itself failed to answer (see `afterServiceFailure`): the caller is kept on the line. */
  recovering: 'Sorry, one moment please.',
  /** A call the service does not know (or no longer keeps) reached it. */
  callLost: "Sorry, this call can't be continued. Please call again. Goodbye.",
  /** The line to the caller dropped and was restored (RECONNECTED). */
  resumed: 'Sorry, we were cut off. Could you say that again?',
} as const;

export type PhraseName = keyof typeof PHRASES;

export const LIMITS = {
  /** Silent gathers in a row that get a re-prompt before the call ends. */
  reprompts: 1,
  /** Failed turns in a row before the call ends. */
  failures: 3,
  /**
   * Turns a call may have, unless configured (CALL_MAX_TURNS): what a call keeps
   * (its turns, the history sent to the agent, its record) stays bounded. About 40
   * minutes of conversation; the caller's next words past it get the closing line.
   */
  turns: 150,
  /** Times in a row the service itself may fail to answer and keep the caller on the line (`afterServiceFailure`); one more ends the call. */
  serviceFailures: 3,
};

/**
 * The service failed to answer a request for the `attempt`-th time in a row (its
 * store is unreachable, say, so no state can be read or committed): what the
 * caller hears, and whether the transport tries again or hangs up. Decided here,
 * with no snapshot, because there may be none to read.
 */
export function afterServiceFailure(attempt: number): { say: PhraseName; then: 'retry' | 'hangup' } {
  return attempt > LIMITS.serviceFailures ? { say: 'goodbyeFailures', then: 'hangup' } : { say: 'recovering', then: 'retry' };
}

export type EndReason = 'goodbye' | 'silence' | 'failures' | 'turns' | 'hangup';

/** What is spoken next: a fixed phrase or (some pieces of) an agent reply. */
export interface Prompt {
  kind: 'phrase' | 'reply';
  /** The phrase name, or `t<turn index>` for a reply. */
  key: string;
  text: string;
  /** Set once voiced: an audio path the transport can play; absent means plain text-to-speech. */
  audio?: string;
  /** A reply's pieces voiced this time, in order, each with its audio path (none: the phone reads it). */
  pieces?: PromptPiece[];
  /** More of the reply follows these pieces: the caller hears them, then Twilio comes back (CONTINUE). */
  more?: boolean;
}

export interface PromptPiece {
  text: string;
  audio?: string;
}

export interface Turn {
  index: number;
  /** What the caller said; for digits pressed, the digits (see `digits`). */
  caller: string;
  /** The caller pressed these keys instead of speaking. */
  digits?: string;
  /** Twilio's confidence, 0..1; Twilio may leave it out. */
  confidence?: number;
  startedAt: number;
  reply?: string;
  /** The reply's pieces voiced so far, in order (`reply` is them joined by spaces). */
  pieces?: string[];
  /**
   * The agent's whole answer, piece by piece, stored once it has finished writing
   * while the caller still hears the first pieces: whichever instance Twilio comes
   * back to voices the rest from here. Dropped once the caller has been given it all.
   */
  written?: string[];
  /**
   * The agent's answer stopped early, after some text (its connection broke, or it
   * ran out of time): why. The reply is what it had said by then.
   */
  cut?: string;
  /** Milliseconds from the caller's speech to the agent's first chunk / whole answer. */
  agentFirstChunkMs?: number;
  agentCompleteMs?: number;
  /** Milliseconds from the caller's speech to the first audio of the reply being ready to play. */
  firstAudioMs?: number;
  /** Milliseconds from the agent's whole answer to its last piece voiced. */
  speechMs?: number;
  /** Whether the reply was played as synthesised audio, read by the phone's own voice, or streamed as text for the phone to speak. */
  voicedBy?: 'audio' | 'say' | 'text';
  /** The caller spoke over the reply: `reply` is only what they heard of it. */
  interrupted?: boolean;
  totalMs?: number;
  failure?: string;
}

export interface PathStep {
  state: string;
  at: number;
  event: string;
}

export interface CallContext {
  callSid: string;
  from: string;
  to: string;
  startedAt: number;
  endedAt?: number;
  turns: Turn[];
  prompt: Prompt;
  /** How an agent reply reaches the caller (see the file's head). */
  replyDelivery: ReplyDelivery;
  /** Absolute time after which the current agent turn is given up (ms since epoch). */
  deadlineAt?: number;
  /** What the caller hears while a slow turn keeps them waiting (SLOW): the hold line the first time, then pauses. */
  filler?: Filler;
  /** Turns the call may have (LIMITS.turns unless configured). */
  maxTurns: number;
  /** How many times the caller has been given the floor (entered `listening`): a transport may tell its prompts apart by it. */
  floor: number;
  silences: number;
  failures: number;
  ending?: EndReason;
  endReason?: EndReason;
  /** Twilio's final CallStatus, once the call is over. */
  finalStatus?: string;
  durationSec?: number;
  lastError?: string;
  path: PathStep[];
  agentTimeoutMs: number;
}

export type ReplyDelivery = 'pieces' | 'streamed';
export type Filler = 'hold' | 'pause';

export interface CallInput {
  callSid: string;
  from: string;
  to: string;
  at: number;
  /** How long an agent turn may take before the caller hears an apology. */
  agentTimeoutMs: number;
  /** Default `pieces`. */
  replyDelivery?: ReplyDelivery;
  /** Turns the call may have; default LIMITS.turns. */
  maxTurns?: number;
}

export type CallEvent =
  | { type: 'SPEECH'; text: string; confidence?: number; at: number }
  | { type: 'SILENCE'; at: number }
  /** The caller pressed keys (DTMF) instead of speaking. */
  | { type: 'DIGITS'; digits: string; at: number }
  /** The caller spoke over the reply; `heard` is what they had heard of it by then. */
  | { type: 'INTERRUPT'; heard: string; at: number }
  /** The turn is slow: the caller is waiting for it. */
  | { type: 'SLOW'; at: number }
  /** The prompt finished playing (the first pieces of a reply: the caller is ready for the rest). */
  | { type: 'PLAYED'; at: number }
  /** The line to the caller broke and is back (a new ConversationRelay session for the same call). */
  | { type: 'RECONNECTED'; at: number }
  | { type: 'HANGUP'; at: number; status: string; durationSec?: number };

export interface AgentTurnInput {
  callSid: string;
  /** The turn's index, which names the reply's audio. */
  turn: number;
  message: string;
  /** The caller pressed these keys instead of speaking (`message` is then the digits too). */
  digits?: string;
  delivery: ReplyDelivery;
  history: Array<{ role: 'user' | 'assistant'; content: string }>;
}
export interface AgentTurnOutput {
  /** The first piece of the answer: enough to start speaking. */
  text: string;
  firstChunkAt: number;
  at: number;
}
/** Where a reply stands: what the caller has been given, and what the agent was asked (to ask again if the answer was lost). */
export interface ReplyProgress {
  callSid: string;
  turn: number;
  /** The pieces the caller has been given so far. */
  heard: string[];
  /** The whole answer, once stored (see `Turn.written`). */
  written?: string[];
  request: AgentTurnInput;
}
export interface VoiceInput {
  callSid: string;
  prompt: Prompt;
  delivery: ReplyDelivery;
  /** For a reply: where it stands. */
  reply?: ReplyProgress;
}
export interface VoiceOutput {
  audio?: string;
  at: number;
  /** When the first of it reached the caller, if before `at` (streamed text). */
  firstAt?: number;
  /** For a reply: the next pieces, voiced; whether more follow; when the agent's answer was complete. */
  pieces?: PromptPiece[];
  more?: boolean;
  agentCompleteAt?: number;
  /** Something went wrong that the caller does not hear (a piece read by the phone). */
  problem?: string;
  /** The agent's answer ended early: why (see `Turn.cut`). */
  cut?: string;
}
/** The agent's whole answer, once it has finished writing it (`collectReply`). */
export interface WrittenReply {
  /** Every piece, from the first, the ones the caller has heard included. */
  pieces: string[];
  /** When the agent finished (ms since epoch). */
  completeAt: number;
  /** The answer ended early: why (see `Turn.cut`). */
  cut?: string;
}
/** What a failed `voicePrompt` may carry: the reply's pieces, none voiced, for the phone to read. */
export interface VoiceFailure {
  pieces: PromptPiece[];
  agentCompleteAt?: number;
  /** The agent's answer ended early: why (see `Turn.cut`). */
  cut?: string;
}

function notProvided(name: string) {
  return fromPromise<never, unknown>(async () => {
    throw new Error(`${name} was not provided to the call machine`);
  });
}

function phrase(name: PhraseName): Prompt {
  return { kind: 'phrase', key: name, text: PHRASES[name] };
}

/** The time of an event: its own `at`, or the `at` of the actor output it carries. */
function timeOf(event: { type: string }): number | undefined {
  const e = event as { at?: number; output?: { at?: number } };
  return e.at ?? e.output?.at;
}

export function normaliseUtterance(text: string): string {
  return text
    .toLowerCase()
    .replace(/[’‘]/g, "'")
    .replace(/[^\p{L}\p{N}' ]+/gu, ' ')
    .replace(/\s+/g, ' ')
    .trim();
}

export function saysGoodbye(text: string): boolean {
  const words = ` ${normaliseUtterance(text)} `;
  return GOODBYE_PHRASES.some((p) => words.includes(` ${p} `));
}

function historyOf(turns: Turn[]): AgentTurnInput['history'] {
  return turns.flatMap((t) =>
    t.reply === undefined || t.reply === '' || t.failure
      ? []
      : [
          { role: 'user' as const, content: t.caller },
          { role: 'assistant' as const, content: t.reply },
        ],
  );
}

function updateLastTurn(turns: Turn[], patch: Partial<Turn>): Turn[] {
  if (turns.length === 0) return turns;
  return [...turns.slice(0, -1), { ...turns[turns.length - 1]!, ...patch }];
}

/**
 * The key of turn `index`'s reply: `t<index>`. The one place it is built; the
 * audio of a reply's pieces is named after it (src/engine/audio-address.ts).
 */
export function replyKey(index: number): string {
  return `t${index}`;
}

/** The prompt is this turn's reply (not a fixed phrase said during it). */
function isReplyOf(prompt: Prompt, turn: Turn): boolean {
  return prompt.kind === 'reply' && prompt.key === replyKey(turn.index);
}

/** A new turn: the caller's words (or digits) go to the agent. */
function newTurn(context: CallContext, caller: string, at: number, extra: Partial<Turn>): Partial<CallContext> {
  const turn: Turn = { index: context.turns.length, caller, startedAt: at, ...extra };
  return { turns: [...context.turns, turn], silences: 0, filler: undefined, deadlineAt: at + context.agentTimeoutMs };
}

/** The caller already hears the reply (its first pieces played, or its text is streaming to them): a wait is a pause. */
function replyAudible(context: CallContext): boolean {
  const { prompt, turns } = context;
  const turn = turns.at(-1);
  if (turn === undefined || !isReplyOf(prompt, turn)) return false;
  return context.replyDelivery === 'streamed' || (turn.pieces?.length ?? 0) > 0;
}

/** The first wait of a turn has the hold line; every later one, and any once the reply is audible, a pause. */
function fillerFor(context: CallContext): Filler {
  return context.filler === undefined && !replyAudible(context) ? 'hold' : 'pause';
}

export const callMachine = setup({
  types: {
    context: {} as CallContext,
    events: {} as CallEvent,
    input: {} as CallInput,
  },
  actors: {
    askAgent: notProvided('askAgent') as unknown as ReturnType<typeof fromPromise<AgentTurnOutput, AgentTurnInput>>,
    voicePrompt: notProvided('voicePrompt') as unknown as ReturnType<typeof fromPromise<VoiceOutput, VoiceInput>>,
    collectReply: notProvided('collectReply') as unknown as ReturnType<typeof fromPromise<WrittenReply, ReplyProgress>>,
  },
  guards: {
    callerSaysGoodbye: ({ event }) => event.type === 'SPEECH' && saysGoodbye(event.text),
    turnsUsedUp: ({ context }) => context.turns.length >= context.maxTurns,
    mayRepromptAgain: ({ context }) => context.silences < LIMITS.reprompts,
    agentDeadlinePassed: ({ context, event }) =>
      context.deadlineAt !== undefined && (timeOf(event) ?? 0) >= context.deadlineAt,
    tooManyFailures: ({ context }) => context.failures >= LIMITS.failures,
    isEnding: ({ context }) => context.ending !== undefined,
    replyContinues: ({ context, event }) =>
      context.prompt.kind === 'reply' && (event as unknown as { output?: VoiceOutput }).output?.more === true,
    callGoesOn: ({ context }) => context.ending === undefined,
  },
  actions: {
    recordStep: assign({
      path: ({ context, event }, params: { state: string }) => [
        ...context.path,
        { state: params.state, at: timeOf(event) ?? lastTime(context), event: event.type },
      ],
    }),
    fillWait: assign({ filler: ({ context }) => fillerFor(context) }),
    closeAtTurnLimit: assign({ ending: 'turns' as const, filler: undefined, prompt: phrase('goodbyeTurns') }),
    /** The line broke while the agent was answering: the answer is not asked for again, and the turn says why it stops there. */
    lineDropped: assign(({ context }) => {
      const turn = context.turns.at(-1);
      if (!turn || turn.failure || turn.totalMs !== undefined) return { deadlineAt: undefined };
      return { deadlineAt: undefined, turns: updateLastTurn(context.turns, { cut: 'the line to the caller dropped during the answer' }) };
    }),
    /** The caller heard only `heard` of this turn's reply: the turn (and the agent's history) keeps just that. */
    keepHeard: assign(({ context, event }) => {
      const turn = context.turns.at(-1);
      if (event.type !== 'INTERRUPT' || !turn || turn.failure || !isReplyOf(context.prompt, turn)) return {};
      const patch: Partial<Turn> = { reply: event.heard, interrupted: true };
      if (turn.firstAudioMs === undefined) patch.firstAudioMs = event.at - turn.startedAt;
      return { turns: updateLastTurn(context.turns, patch), prompt: { ...context.prompt, text: event.heard } };
    }),
    applyVoice: assign(({ context, event }) => {
      const output = (event as unknown as { output: VoiceOutput }).output;
      if (context.prompt.kind === 'reply') return voicedReply(context, output);
      // A fixed phrase: nothing of a turn to record.
      const prompt: Prompt = { ...context.prompt };
      if (output.audio) prompt.audio = output.audio;
      else delete prompt.audio;
      return { prompt };
    }),
    storeWritten: assign(({ context, event }) => {
      const output = (event as unknown as { output: WrittenReply }).output;
      const turn = context.turns.at(-1);
      if (!turn) return {};
      const update: Partial<Turn> = { written: output.pieces, agentCompleteMs: output.completeAt - turn.startedAt };
      if (output.cut === undefined) return { turns: updateLastTurn(context.turns, update) };
      return { turns: updateLastTurn(context.turns, { ...update, cut: output.cut }), lastError: output.cut };
    }),
    applyVoiceFailure: assign(({ context, event }) => {
      const lastError = `speech: ${errorMessage((event as unknown as { error: unknown }).error)}`;
      // The phone reads what could not be voiced: the reply's pieces the actor names, else the prompt's text.
      if (context.prompt.kind === 'reply') {
        const at = timeOf(event) ?? lastTime(context);
        const failure = (event as unknown as { error: unknown }).error as Partial<VoiceFailure> | undefined;
        const output: VoiceOutput = { at, pieces: failure?.pieces ?? (context.prompt.text ? [{ text: context.prompt.text }] : []) };
        if (failure?.agentCompleteAt !== undefined) output.agentCompleteAt = failure.agentCompleteAt;
        if (failure?.cut !== undefined) output.cut = failure.cut;
        return { ...voicedReply(context, output), lastError };
      }
      const prompt: Prompt = { ...context.prompt };
      delete prompt.audio;
      return { prompt, lastError };
    }),
  },
}).createMachine({
  id: 'call',
  description: 'One phone call, from the greeting to the hang-up.',
  context: ({ input }) => ({
    callSid: input.callSid,
    from: input.from,
    to: input.to,
    startedAt: input.at,
    turns: [],
    prompt: phrase('greeting'),
    replyDelivery: input.replyDelivery ?? 'pieces',
    maxTurns: input.maxTurns ?? LIMITS.turns,
    floor: 0,
    silences: 0,
    failures: 0,
    path: [{ state: 'greeting', at: input.at, event: 'CALL_STARTED' }],
    agentTimeoutMs: input.agentTimeoutMs,
  }),
  initial: 'greeting',
  on: {
    HANGUP: {
      target: '.ended',
      actions: assign(({ context, event }) => ({
        endReason: context.endReason ?? context.ending ?? 'hangup',
        endedAt: event.at,
        finalStatus: event.status,
        durationSec: event.durationSec ?? Math.max(0, Math.round((event.at - context.startedAt) / 1000)),
      })),
    },
  },
  states: {
    greeting: {
      description: 'The call has just been answered: the caller is about to hear the greeting.',
      always: { target: 'speaking', actions: assign({ prompt: phrase('greeting') }) },
    },
    listening: {
      description:
        'The caller hears the prompt (a reply, the greeting, a re-prompt or an apology) and may speak over it; the transport waits for their words.',
      tags: ['renderable'],
      entry: [{ type: 'recordStep', params: { state: 'listening' } }, assign({ floor: ({ context }) => context.floor + 1 })],
      on: {
        SPEECH: [
          {
            guard: 'callerSaysGoodbye',
            target: 'speaking',
            actions: assign({ ending: 'goodbye', filler: undefined, prompt: phrase('goodbye') }),
          },
          { guard: 'turnsUsedUp', target: 'speaking', actions: 'closeAtTurnLimit' },
          {
            target: 'thinking',
            actions: assign(({ context, event }) => {
              const e = event as Extract<CallEvent, { type: 'SPEECH' }>;
              return newTurn(context, e.text, e.at, e.confidence === undefined ? {} : { confidence: e.confidence });
            }),
          },
        ],
        DIGITS: [
          { guard: 'turnsUsedUp', target: 'speaking', actions: 'closeAtTurnLimit' },
          {
            target: 'thinking',
            actions: assign(({ context, event }) => {
              const e = event as Extract<CallEvent, { type: 'DIGITS' }>;
              return newTurn(context, e.digits, e.at, { digits: e.digits });
            }),
          },
        ],
        // The rest of the reply was still playing (streamed text is spoken after it is sent).
        INTERRUPT: { actions: 'keepHeard' },
        // Each silence starts a new wait for the caller: a slow voice says the hold phrase again, once.
        SILENCE: [
          {
            guard: 'mayRepromptAgain',
            target: 'speaking',
            actions: assign({ silences: ({ context }) => context.silences + 1, filler: undefined, prompt: phrase('reprompt') }),
          },
          {
            target: 'speaking',
            actions: assign({ ending: 'silence', filler: undefined, prompt: phrase('goodbyeSilence') }),
          },
        ],
        RECONNECTED: { target: 'speaking', actions: assign({ filler: undefined, prompt: phrase('resumed') }) },
      },
    },
    thinking: {
      description:
        'The agent is answering the caller. While it is slow (SLOW) the caller hears the hold line, then pauses; past the turn deadline, an apology.',
      tags: ['working'],
      entry: { type: 'recordStep', params: { state: 'thinking' } },
      invoke: {
        id: 'agent',
        src: 'askAgent',
        input: ({ context }): AgentTurnInput => agentInput(context),
        onDone: {
          target: 'speaking',
          actions: assign(({ context, event }) => {
            const turn = context.turns.at(-1)!;
            return {
              failures: 0,
              deadlineAt: undefined,
              prompt: { kind: 'reply' as const, key: replyKey(turn.index), text: event.output.text },
              turns: updateLastTurn(context.turns, { agentFirstChunkMs: event.output.firstChunkAt - turn.startedAt }),
            };
          }),
        },
        onError: {
          target: 'errorFallback',
          actions: assign(({ context, event }) => {
            const reason = `agent: ${errorMessage(event.error)}`;
            return { lastError: reason, turns: updateLastTurn(context.turns, { failure: reason }) };
          }),
        },
      },
      on: {
        SLOW: [
          {
            guard: 'agentDeadlinePassed',
            target: 'errorFallback',
            actions: assign(({ context }) => {
              const reason = 'agent: no answer before the turn deadline';
              return { lastError: reason, turns: updateLastTurn(context.turns, { failure: reason }) };
            }),
          },
          { actions: 'fillWait' },
        ],
        RECONNECTED: { target: 'speaking', actions: [{ type: 'lineDropped' }, assign({ filler: undefined, prompt: phrase('resumed') })] },
      },
    },
    errorFallback: {
      description: 'A turn failed (agent error or timeout): apologise and listen again, or end after too many failures in a row.',
      entry: [{ type: 'recordStep', params: { state: 'errorFallback' } }, assign({ failures: ({ context }) => context.failures + 1, deadlineAt: undefined })],
      always: [
        {
          guard: 'tooManyFailures',
          target: 'speaking',
          actions: assign({ ending: 'failures', prompt: phrase('goodbyeFailures') }),
        },
        { target: 'speaking', actions: assign({ prompt: phrase('apology') }) },
      ],
    },
    speaking: {
      description:
        'The prompt is being voiced (synthesised speech, the phone\u2019s own voice if synthesis fails, or text streamed for the phone to speak). For a reply: its next pieces, as soon as the first of them is voiced; streamed, all of it as the agent writes.',
      tags: ['working'],
      entry: { type: 'recordStep', params: { state: 'speaking' } },
      invoke: {
        id: 'voice',
        src: 'voicePrompt',
        input: ({ context }): VoiceInput => {
          const input: VoiceInput = { callSid: context.callSid, prompt: context.prompt, delivery: context.replyDelivery };
          if (context.prompt.kind === 'reply' && context.turns.length > 0) input.reply = replyProgress(context);
          return input;
        },
        onDone: [
          { guard: 'isEnding', target: 'terminating', actions: 'applyVoice' },
          { guard: 'replyContinues', target: 'replying', actions: 'applyVoice' },
          { target: 'listening', actions: 'applyVoice' },
        ],
        onError: [
          { guard: 'isEnding', target: 'terminating', actions: 'applyVoiceFailure' },
          { target: 'listening', actions: 'applyVoiceFailure' },
        ],
      },
      on: {
        SLOW: { actions: 'fillWait' },
        // Streamed text: the caller spoke over the reply; the rest of it is not asked for.
        INTERRUPT: { guard: 'callGoesOn', target: 'listening', actions: 'keepHeard' },
        RECONNECTED: { guard: 'callGoesOn', target: 'speaking', reenter: true, actions: [{ type: 'lineDropped' }, assign({ filler: undefined, prompt: phrase('resumed') })] },
      },
    },
    replying: {
      description:
        'The caller hears the first pieces of the reply while the agent is still writing the rest; once the agent has finished, the whole answer is stored. When the pieces have played (PLAYED), the next ones are voiced.',
      tags: ['renderable'],
      entry: { type: 'recordStep', params: { state: 'replying' } },
      invoke: {
        id: 'rest',
        src: 'collectReply',
        input: ({ context }): ReplyProgress => replyProgress(context),
        // It does not fail: however the answer ended, what the agent wrote stands (a cut is noted).
        onDone: { actions: 'storeWritten' },
      },
      on: {
        PLAYED: {
          target: 'speaking',
          // What the caller heard is in the turn; the prompt now waits for the next pieces.
          actions: assign({ prompt: ({ context }) => ({ kind: 'reply' as const, key: context.prompt.key, text: '' }) }),
        },
      },
    },
    terminating: {
      description: 'The caller hears the closing line and the call is hung up.',
      tags: ['renderable'],
      entry: [{ type: 'recordStep', params: { state: 'terminating' } }, assign({ endReason: ({ context }) => context.ending })],
    },
    ended: {
      description: 'Twilio reported the call over; its record is final.',
      type: 'final',
      entry: { type: 'recordStep', params: { state: 'ended' } },
    },
  },
});

function lastTime(context: CallContext): number {
  return context.path.at(-1)?.at ?? context.startedAt;
}

function agentInput(context: CallContext): AgentTurnInput {
  const turn = context.turns.at(-1)!;
  const input: AgentTurnInput = {
    callSid: context.callSid,
    turn: turn.index,
    message: turn.caller,
    history: historyOf(context.turns.slice(0, -1)),
    delivery: context.replyDelivery,
  };
  if (turn.digits !== undefined) input.digits = turn.digits;
  return input;
}

function replyProgress(context: CallContext): ReplyProgress {
  const turn = context.turns.at(-1)!;
  const progress: ReplyProgress = { callSid: context.callSid, turn: turn.index, heard: turn.pieces ?? [], request: agentInput(context) };
  if (turn.written) progress.written = turn.written;
  return progress;
}

/**
 * A reply's next pieces are voiced: they become the prompt, and the turn records
 * them. An actor that answers without pieces voiced the prompt's text as one.
 */
function voicedReply(context: CallContext, output: VoiceOutput): Partial<CallContext> {
  const pieces =
    output.pieces ?? (context.prompt.text ? [output.audio ? { text: context.prompt.text, audio: output.audio } : { text: context.prompt.text }] : []);
  const prompt: Prompt = { kind: 'reply', key: context.prompt.key, text: pieces.map((p) => p.text).join(' '), pieces };
  if (output.more) prompt.more = true;
  const patch: Partial<CallContext> = { prompt };
  if (output.problem) patch.lastError = output.problem;
  if (output.cut) patch.lastError = output.cut;
  const turn = context.turns.at(-1);
  if (!turn || !isReplyOf(context.prompt, turn)) return patch;
  const heard = [...(turn.pieces ?? []), ...pieces.map((p) => p.text)];
  const updated: Turn = { ...turn, pieces: heard };
  // Once the caller has been given all of it, the stored answer has served its purpose.
  if (!output.more) delete updated.written;
  if (heard.length > 0) updated.reply = heard.join(' ');
  if (turn.firstAudioMs === undefined) updated.firstAudioMs = (output.firstAt ?? output.at) - turn.startedAt;
  if (context.replyDelivery === 'streamed') updated.voicedBy = 'text';
  else if (pieces.some((p) => !p.audio)) updated.voicedBy = 'say';
  else if (turn.voicedBy === undefined) updated.voicedBy = 'audio';
  if (output.cut) updated.cut = output.cut;
  if (!output.more) {
    // The agent's end: as this voicing saw it, else as stored when the answer was written.
    const completeMs = output.agentCompleteAt !== undefined ? output.agentCompleteAt - turn.startedAt : (turn.agentCompleteMs ?? output.at - turn.startedAt);
    updated.agentCompleteMs = completeMs;
    updated.speechMs = output.at - (turn.startedAt + completeMs);
    updated.totalMs = output.at - turn.startedAt;
  }
  patch.turns = [...context.turns.slice(0, -1), updated];
  return patch;
}

export function stateName(value: unknown): string {
  if (typeof value === 'string') return value;
  if (value && typeof value === 'object') {
    const [k, v] = Object.entries(value)[0] ?? [];
    return k === undefined ? 'unknown' : `${k}.${stateName(v)}`;
  }
  return 'unknown';
}

export function errorMessage(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}

export type CallMachine = typeof callMachine;
