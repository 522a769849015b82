/**
 * The remote agent adapter: asks the external agent at KOOZIE_AGENT_URI for an
 * answer and streams it back as Server-Sent Events, so the call can start speaking
 * the first words while the agent is still writing the rest.
 *
 * A caller on the phone is waiting in silence while this runs, so two deadlines
 * bound it: no text within `firstChunkTimeoutMs`, or no end within `totalTimeoutMs`,
 * and the request is aborted and the turn fails with `AgentError('timeout')`.
 *
 * @see https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
 * @see https://github.com/rexxars/eventsource-parser#usage
 */
import { createParser, type EventSourceMessage, type ParseError } from 'eventsource-parser';
import { HttpClient, httpUrl, readBodyPrefix, type HttpAnswer } from '../http-client/http-exchange.ts';
import { isTimeout, LinkedAbort } from '../http-client/linked-abort.ts';
import { AgentError, type Agent, type AgentRequest } from './agent.ts';

export interface AgentClientOptions {
  /** KOOZIE_AGENT_URI; the client posts to `${baseUrl}/chat`. */
  baseUrl: string;
  /** The connection pool to use; the service shares one between its outside services. */
  http?: HttpClient;
  /** How long the caller may sit in silence before this agent is given up on. */
  firstChunkTimeoutMs?: number;
  /** Upper bound for the whole answer, however steadily it trickles in. */
  totalTimeoutMs?: number;
}

/** An agent's error body is not ours to relay in full: it may be an HTML page or a stack trace. */
const MAX_EXCERPT_CHARS = 200;
/** Far above any spoken answer; stops a broken agent from growing the parser's buffer without bound. */
const MAX_SSE_BUFFER_CHARS = 1_000_000;

export function createAgentClient(options: AgentClientOptions): Agent {
  const { http = new HttpClient(), firstChunkTimeoutMs = 8000, totalTimeoutMs = 20000 } = options;
  // Parsed once so a wrong KOOZIE_AGENT_URI fails at boot, not on the first call.
  // Messages name only the host: the URI may carry credentials.
  const chatUrl = httpUrl(`${options.baseUrl.replace(/\/+$/, '')}/chat`, 'the agent URI');
  const agentHost = chatUrl.host;
  const settings: ReplySettings = { http, chatUrl, agentHost, firstChunkTimeoutMs, totalTimeoutMs };
  return {
    kind: 'remote',
    reply: (request, signal) => streamReply(settings, request, signal),
  };
}

interface ReplySettings {
  http: HttpClient;
  chatUrl: URL;
  agentHost: string;
  firstChunkTimeoutMs: number;
  totalTimeoutMs: number;
}

async function* streamReply(
  settings: ReplySettings,
  request: AgentRequest,
  callerSignal: AbortSignal,
): AsyncGenerator<string, void, undefined> {
  const { firstChunkTimeoutMs, totalTimeoutMs, agentHost } = settings;
  // One signal for the request: the caller's, the two deadlines, and our own release
  // in `finally` (closes the connection when the consumer stops reading early or the
  // agent keeps the stream open after `[DONE]`). Aborting it destroys the answer,
  // so a pending read ends at once.
  const link = new LinkedAbort([callerSignal]);
  const signal = link.signal;
  const stopped = (): AgentError => {
    const reason: unknown = signal.reason;
    // A deadline, ours or the caller's, is a timeout; anything else is the caller cancelling.
    if (isTimeout(reason)) return new AgentError('timeout', reason.message);
    return new AgentError('aborted', 'the turn was aborted while waiting for the agent', { cause: reason });
  };
  if (signal.aborted) {
    link.dispose();
    throw stopped();
  }
  const cancelFirstChunkDeadline = link.deadline(firstChunkTimeoutMs, `no text from the agent at ${agentHost} within ${firstChunkTimeoutMs} ms`);
  link.deadline(totalTimeoutMs, `the agent at ${agentHost} did not finish within ${totalTimeoutMs} ms`);
  try {
    let response: HttpAnswer;
    try {
      response = await settings.http.post(
        settings.chatUrl,
        { 'content-type': 'application/json', accept: 'text/event-stream' },
        // `session_id` as well as `callSid`: agents built on common chat servers key memory on it.
        JSON.stringify({
          message: request.message,
          history: request.history,
          callSid: request.callSid,
          session_id: request.callSid,
        }),
        signal,
      );
    } catch (error) {
      if (signal.aborted) throw stopped();
      throw new AgentError('unreachable', `could not reach the agent at ${agentHost}`, { cause: error });
    }

    if (response.status < 200 || response.status > 299) {
      const excerpt = await readExcerpt(response);
      throw new AgentError(
        'status',
        `the agent at ${agentHost} answered HTTP ${response.status}${excerpt === '' ? '' : `: ${excerpt}`}`,
        { status: response.status },
      );
    }
    // A missing content type is tolerated (the events still parse); a different one
    // means this is not the endpoint we think it is, which "empty" would hide.
    const contentType = response.headers['content-type'];
    if (contentType !== undefined && !contentType.toLowerCase().startsWith('text/event-stream')) {
      const excerpt = await readExcerpt(response);
      throw new AgentError('malformed', `the agent at ${agentHost} answered ${contentType}, not text/event-stream: ${excerpt}`, {
        status: response.status,
      });
    }
    if (signal.aborted) throw stopped();
    const body = response.body;
    body.setEncoding('utf8'); // decodes across chunk boundaries

    const events: EventSourceMessage[] = [];
    let parseFailure: ParseError | undefined;
    const parser = createParser({
      onEvent: (event) => events.push(event),
      // Unknown fields and bad `retry:` values are ignored, as an EventSource would;
      // only an overflowing buffer makes the stream unusable.
      onError: (error) => {
        if (error.type === 'max-buffer-size-exceeded') parseFailure = error;
      },
      maxBufferSize: MAX_SSE_BUFFER_CHARS,
    });
    let spokeAtAll = false;
    try {
      for await (const data of body as AsyncIterable<string>) {
        if (signal.aborted) throw stopped();
        parser.feed(data);
        if (parseFailure !== undefined) {
          throw new AgentError('malformed', `the agent at ${agentHost} sent an event larger than ${MAX_SSE_BUFFER_CHARS} characters`, {
            cause: parseFailure,
          });
        }
        for (const event of events.splice(0)) {
          const chunk = readChunk(event.data, agentHost);
          if (chunk.kind === 'done') {
            if (!spokeAtAll) throw new AgentError('empty', `the agent at ${agentHost} finished without any text`);
            return;
          }
          if (chunk.kind === 'text' && chunk.text !== '') {
            cancelFirstChunkDeadline();
            spokeAtAll = true;
            yield chunk.text;
          }
        }
      }
    } catch (error) {
      if (error instanceof AgentError) throw error;
      if (signal.aborted) throw stopped();
      // The connection dropped mid-answer. Once there is text, that text stands as
      // the answer (`broken`: the caller hears it rather than an apology, and the
      // turn records that it was cut). Before any text, it is a failure.
      if (spokeAtAll) {
        throw new AgentError('broken', `the connection to the agent at ${agentHost} broke mid-answer`, { cause: error });
      }
      throw new AgentError('unreachable', `the connection to the agent at ${agentHost} broke before any text`, {
        cause: error,
      });
    }
    if (!spokeAtAll) throw new AgentError('empty', `the agent at ${agentHost} closed the stream without any text`);
  } finally {
    link.abort();
  }
}

type Chunk = { kind: 'text'; text: string } | { kind: 'skip' } | { kind: 'done' };

/** One event's `data`: `{"text": "..."}`, a text-less event such as a ping, or `[DONE]`. */
function readChunk(data: string, agentHost: string): Chunk {
  // `[DONE]` is the OpenAI-style end marker many agent servers send before closing.
  if (data.trim() === '[DONE]') return { kind: 'done' };
  let parsed: unknown;
  try {
    parsed = JSON.parse(data);
  } catch (error) {
    throw new AgentError('malformed', `the agent at ${agentHost} sent an event that is not JSON: ${excerptOf(data)}`, {
      cause: error,
    });
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new AgentError('malformed', `the agent at ${agentHost} sent an event that is not a JSON object: ${excerptOf(data)}`);
  }
  // Keep-alives and status events carry no text; they are not an error.
  if (!('text' in parsed)) return { kind: 'skip' };
  if (typeof parsed.text !== 'string') {
    throw new AgentError('malformed', `the agent at ${agentHost} sent a "text" that is not a string: ${excerptOf(data)}`);
  }
  return { kind: 'text', text: parsed.text };
}

/** The start of an error body, read no further than needed; empty if it cannot be read. */
async function readExcerpt(response: HttpAnswer): Promise<string> {
  return excerptOf(await readBodyPrefix(response.body, MAX_EXCERPT_CHARS + 1));
}

function excerptOf(text: string): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length > MAX_EXCERPT_CHARS ? `${flat.slice(0, MAX_EXCERPT_CHARS)}…` : flat;
}
