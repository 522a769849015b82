/**
 * The built-in agent, used when no KOOZIE_AGENT_URI is configured, so a new user
 * hears the whole loop work (speech in, answer streamed, memory across turns)
 * before connecting a real agent.
 *
 * It is deterministic, so tests and demos can assert on what it says, and it
 * answers from `history` alone, which shows that the conversation reaches the agent.
 */
import { AgentError, type Agent, type AgentRequest } from './agent.ts';
import { isTimeout } from '../http-client/linked-abort.ts';

/** Words per streamed chunk: a few chunks per answer, like a real agent's stream. */
const WORDS_PER_CHUNK = 4;
/** Quotes longer than this are shortened: the answer is spoken, so it must stay short. */
const MAX_QUOTED_WORDS = 12;

export function createLocalAgent(): Agent {
  return {
    kind: 'local',
    async *reply(request, signal) {
      const words = localAnswer(request).split(' ');
      for (let start = 0; start < words.length; start += WORDS_PER_CHUNK) {
        // Give the event loop a turn between chunks, as a network stream would, so an
        // abort can land mid-answer.
        await new Promise((resolve) => setImmediate(resolve));
        if (signal.aborted) {
          if (isTimeout(signal.reason)) throw new AgentError('timeout', signal.reason.message);
          throw new AgentError('aborted', 'the turn was aborted while the local agent answered', { cause: signal.reason });
        }
        const end = start + WORDS_PER_CHUNK;
        yield words.slice(start, end).join(' ') + (end < words.length ? ' ' : '');
      }
    },
  };
}

/**
 * The whole answer for one turn. `history` holds the turns before this one; the
 * caller's entries are the `user` ones.
 */
export function localAnswer(request: AgentRequest): string {
  const message = quote(request.message);
  if (message === '') return "I didn't catch that. Could you say it again?";
  const earlier = request.history.filter((entry) => entry.role === 'user').map((entry) => quote(entry.content));
  const previous = earlier.findLast((content) => content !== '');
  if (previous === undefined) {
    return `You said: ${message}. I'm the built-in demo agent; set KOOZIE_AGENT_URI to connect a real one.`;
  }
  return `You said: ${message}. That's ${earlier.length + 1} things you've told me on this call. Earlier you said: ${previous}.`;
}

/** The caller's words, shortened, without the closing punctuation the sentence adds back. */
function quote(text: string): string {
  const words = text.trim().split(/\s+/).filter((word) => word !== '');
  const shortened = words.length > MAX_QUOTED_WORDS ? `${words.slice(0, MAX_QUOTED_WORDS).join(' ')}…` : words.join(' ');
  return shortened.replace(/[.!?,;:]+$/, '');
}
