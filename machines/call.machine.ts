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
 * It knows nothing of TwiML: a transport renders `listening`, `replying`,
 * `thinking` (on hold) and `terminating`, and turns what the caller does into
 * SPEECH / SILENCE / HOLD / CONTINUE / HANGUP events.
 *
 * An agent reply is voiced in pieces while the agent is still writing it: the
 * caller hears the first sentence as soon as it is voiced (`replying`), Twilio
 * comes back for more when it has played it (CONTINUE), and the last pieces are
 * heard while listening. Each pass through `speaking` voices the next pieces.
 * While the caller hears the first pieces, `replying` waits for the agent to finish
 * and stores the whole answer (`collectReply`), so the instance that gets Twilio's
 * CONTINUE voices the rest without asking the agent again.
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

/** What the service says on its own account; the transport voices them. */
export const PHRASES = {
  greeting: "Hello! I'm your HeyAI assistant. How can I help you today?",
  reprompt: "Sorry, I didn't hear anything. Are you still there?",
  apology: "Sorry, I'm having trouble answering right now. Could you say that again?",
  hold: 'One moment.',
  goodbye: 'Thank you for calling. Goodbye!',
  goodbyeSilence: "I haven't heard anything, so I'll hang up now. Goodbye!",
  goodbyeFailures: "Sorry, I can't help right now. Please call again later. Goodbye!",
} as const;

export type PhraseName = keyof typeof PHRASES;

export const LIMITS = {
  /** Silent gathers in a row that get a re-prompt before the call ends. */
  reprompts: 1,
  /** Failed turns in a row before the call ends. */
  failures: 3,
};

export type EndReason = 'goodbye' | 'silence' | 'failures' | 'hangup';

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
  caller: string;
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
  /** Whether the reply was played as synthesised audio or read by the phone's own voice. */
  voicedBy?: 'audio' | 'say';
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
  /** Absolute time after which the current agent turn is given up (ms since epoch). */
  deadlineAt?: number;
  holds: number;
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

export interface CallInput {
  callSid: string;
  from: string;
  to: string;
  at: number;
  /** How long an agent turn may take before the caller hears an apology. */
  agentTimeoutMs: number;
}

export type CallEvent =
  | { type: 'SPEECH'; text: string; confidence?: number; at: number }
  | { type: 'SILENCE'; at: number }
  | { type: 'HOLD'; at: number }
  /** Twilio played the first pieces of a reply and asks for the rest (`/continue?played=1`). */
  | { type: 'CONTINUE'; at: number }
  | { type: 'HANGUP'; at: number; status: string; durationSec?: number };

export interface AgentTurnInput {
  callSid: string;
  /** The turn's index, which names the reply's audio. */
  turn: number;
  message: string;
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
  /** The text spoken just before, so synthesised pieces sound like one voice. */
  previousText?: string;
  /** For a reply: where it stands. */
  reply?: ReplyProgress;
}
export interface VoiceOutput {
  audio?: string;
  at: number;
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
    t.reply === undefined || t.failure
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
    mayRepromptAgain: ({ context }) => context.silences < LIMITS.reprompts,
    agentDeadlinePassed: ({ context, event }) =>
      context.deadlineAt !== undefined && (timeOf(event) ?? 0) >= context.deadlineAt,
    tooManyFailures: ({ context }) => context.failures >= LIMITS.failures,
    isEnding: ({ context }) => context.ending !== undefined,
    replyContinues: ({ context, event }) =>
      context.prompt.kind === 'reply' && (event as unknown as { output?: VoiceOutput }).output?.more === true,
  },
  actions: {
    recordStep: assign({
      path: ({ context, event }, params: { state: string }) => [
        ...context.path,
        { state: params.state, at: timeOf(event) ?? lastTime(context), event: event.type },
      ],
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
    holds: 0,
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
      entry: { type: 'recordStep', params: { state: 'listening' } },
      on: {
        SPEECH: [
          {
            guard: 'callerSaysGoodbye',
            target: 'speaking',
            actions: assign({ ending: 'goodbye', holds: 0, prompt: phrase('goodbye') }),
          },
          {
            target: 'thinking',
            actions: assign(({ context, event }) => {
              const e = event as Extract<CallEvent, { type: 'SPEECH' }>;
              const turn: Turn = { index: context.turns.length, caller: e.text, startedAt: e.at };
              if (e.confidence !== undefined) turn.confidence = e.confidence;
              return {
                turns: [...context.turns, turn],
                silences: 0,
                holds: 0,
                deadlineAt: e.at + context.agentTimeoutMs,
              };
            }),
          },
        ],
        // Each silence starts a new wait for the caller: a slow voice says the hold phrase again, once.
        SILENCE: [
          {
            guard: 'mayRepromptAgain',
            target: 'speaking',
            actions: assign({ silences: ({ context }) => context.silences + 1, holds: 0, prompt: phrase('reprompt') }),
          },
          {
            target: 'speaking',
            actions: assign({ ending: 'silence', holds: 0, prompt: phrase('goodbyeSilence') }),
          },
        ],
      },
    },
    thinking: {
      description:
        'The agent is answering the caller. If it is slow the transport puts the caller on hold (HOLD); past the turn deadline the caller hears an apology.',
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
              prompt: { kind: 'reply' as const, key: `t${turn.index}`, text: event.output.text },
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
        HOLD: [
          {
            guard: 'agentDeadlinePassed',
            target: 'errorFallback',
            actions: assign(({ context }) => {
              const reason = 'agent: no answer before the turn deadline';
              return { lastError: reason, turns: updateLastTurn(context.turns, { failure: reason }) };
            }),
          },
          { actions: assign({ holds: ({ context }) => context.holds + 1 }) },
        ],
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
        'The prompt is being voiced (synthesised speech, or the phone\u2019s own voice if synthesis fails). For a reply: its next pieces, as soon as the first of them is voiced.',
      tags: ['working'],
      entry: { type: 'recordStep', params: { state: 'speaking' } },
      invoke: {
        id: 'voice',
        src: 'voicePrompt',
        input: ({ context }): VoiceInput => {
          const previous = context.turns.at(-1);
          const input: VoiceInput = { callSid: context.callSid, prompt: context.prompt };
          if (context.prompt.kind === 'reply' && previous) {
            input.reply = replyProgress(context);
          }
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
        // Counted, so only the first hold of a wait says the hold phrase; later ones pause.
        HOLD: { actions: assign({ holds: ({ context }) => context.holds + 1 }) },
      },
    },
    replying: {
      description:
        'The caller hears the first pieces of the reply while the agent is still writing the rest; once the agent has finished, the whole answer is stored. When the pieces have played, Twilio asks for more (CONTINUE).',
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
        CONTINUE: {
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
  return { callSid: context.callSid, turn: turn.index, message: turn.caller, history: historyOf(context.turns.slice(0, -1)) };
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
  if (!turn || context.prompt.key !== `t${turn.index}`) return patch;
  const heard = [...(turn.pieces ?? []), ...pieces.map((p) => p.text)];
  const updated: Turn = { ...turn, pieces: heard };
  // Once the caller has been given all of it, the stored answer has served its purpose.
  if (!output.more) delete updated.written;
  if (heard.length > 0) updated.reply = heard.join(' ');
  if (turn.firstAudioMs === undefined) updated.firstAudioMs = output.at - turn.startedAt;
  if (pieces.some((p) => !p.audio)) updated.voicedBy = 'say';
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
