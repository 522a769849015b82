/**
 * The remote agent adapter: asks the external agent at KOOZIE_AGENT_URI for an
 * answer and streams it back as Server-Sent Events, so the call can start speaking
 * the first words while the agent is still writing the rest. What it sends and what
 * it accepts is docs/agent-contract.md; keep the two together.
 *
 * A caller on the phone is waiting (on hold) while this runs, so two deadlines bound
 * it: the agent silent for `firstTextTimeoutMs` before its first text (a keep-alive
 * comment or a text-less event restarts that wait: the agent is still working), or
 * no end within `totalTimeoutMs` however it keeps the connection alive; either
 * aborts the request and fails the turn with `AgentError('timeout')`.
 *
 * @see https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
 * @see https://github.com/rexxars/eventsource-parser#usage
 */
import { createParser, type EventSourceMessage, type ParseError } from 'eventsource-parser';
import type { Logger } from 'pino';
import { HttpClient, httpUrl, readBodyPrefix, type HttpAnswer } from '../http-client/http-exchange.ts';
import { isTimeout, LinkedAbort } from '../http-client/linked-abort.ts';
import { AgentError, type Agent, type AgentRequest } from './agent.ts';

/**
 * What the request body carries. `minimal`: `{"message"}`, the original contract.
 * `full`: also `history`, `callSid` and `session_id`, which agents that keep no
 * memory of their own need, and strict ones (Pydantic `extra="forbid"`) refuse.
 */
export type AgentRequestShape = 'minimal' | 'full';

export interface AgentClientOptions {
  /** KOOZIE_AGENT_URI; the client posts to `${baseUrl}/chat`. */
  baseUrl: string;
  /** Where a request the agent refuses (4xx) is reported, once per call. */
  log: Logger;
  /** The connection pool to use; the service shares one between its outside services. */
  http?: HttpClient;
  /** AGENT_REQUEST; default `full`. */
  requestShape?: AgentRequestShape;
  /** AGENT_FIRST_TEXT_TIMEOUT_MS: how long the agent may be silent before its first text. */
  firstTextTimeoutMs?: number;
  /** AGENT_TIMEOUT_MS: upper bound for the whole answer, however steadily it trickles in. */
  totalTimeoutMs?: number;
}

/** An agent's error body is not ours to relay in full: it may be an HTML page or a stack trace. */
const MAX_EXCERPT_CHARS = 200;
/** Far above any spoken answer; stops a broken agent from growing the parser's buffers without bound. */
const MAX_SSE_BUFFER_CHARS = 1_000_000;
/** Calls whose refusal has been logged; past this many the oldest is forgotten (and may be logged once more). */
const REMEMBERED_REFUSALS = 1_000;

export function createAgentClient(options: AgentClientOptions): Agent {
  const { log, http = new HttpClient(), requestShape = 'full', firstTextTimeoutMs = 15_000, totalTimeoutMs = 20_000 } = options;
  // Parsed once so a wrong KOOZIE_AGENT_URI fails at boot, not on the first call.
  // Messages name only the host: the URI may carry credentials.
  const chatUrl = httpUrl(`${options.baseUrl.replace(/\/+$/, '')}/chat`, 'the agent URI');
  const agentHost = chatUrl.host;
  const refusedCalls = new Set<string>();
  const settings: ReplySettings = {
    http,
    chatUrl,
    agentHost,
    requestShape,
    firstTextTimeoutMs,
    totalTimeoutMs,
    // A refused request is refused again on every turn of the call: say what the
    // agent said once, not once a turn. Never its headers (they may set cookies).
    reportRefusal(callSid, status, said) {
      if (refusedCalls.has(callSid)) return;
      refusedCalls.add(callSid);
      if (refusedCalls.size > REMEMBERED_REFUSALS) refusedCalls.delete(refusedCalls.values().next().value!);
      const hint =
        requestShape === 'full' && (status === 400 || status === 422)
          ? { hint: 'an agent that takes only {"message"} needs AGENT_REQUEST=minimal' }
          : {};
      log.warn({ callSid, agentHost, status, agentSaid: said, ...hint }, 'the agent refused the request (logged once per call)');
    },
  };
  return {
    kind: 'remote',
    reply: (request, signal) => streamReply(settings, request, signal),
  };
}

interface ReplySettings {
  http: HttpClient;
  chatUrl: URL;
  agentHost: string;
  requestShape: AgentRequestShape;
  firstTextTimeoutMs: number;
  totalTimeoutMs: number;
  reportRefusal(callSid: string, status: number, said: string): void;
}

async function* streamReply(
  settings: ReplySettings,
  request: AgentRequest,
  callerSignal: AbortSignal,
): AsyncGenerator<string, void, undefined> {
  const { firstTextTimeoutMs, totalTimeoutMs, agentHost } = settings;
  // One signal for the request: the caller's, the two deadlines, and our own release
  // in `finally` (closes the connection when the consumer stops reading early or the
  // agent keeps the stream open after its end signal). Aborting it destroys the
  // answer, so a pending read ends at once.
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
  const firstText = new FirstTextWait(link, firstTextTimeoutMs, `no text and no keep-alive from the agent at ${agentHost} within ${firstTextTimeoutMs} ms`);
  link.deadline(totalTimeoutMs, `the agent at ${agentHost} did not finish within ${totalTimeoutMs} ms`);
  try {
    let response: HttpAnswer;
    try {
      response = await settings.http.post(
        settings.chatUrl,
        { 'content-type': 'application/json', accept: 'text/event-stream' },
        JSON.stringify(requestBody(settings.requestShape, request)),
        signal,
      );
    } catch (error) {
      if (signal.aborted) throw stopped();
      throw new AgentError('unreachable', `could not reach the agent at ${agentHost}`, { cause: error });
    }

    if (response.status >= 400 && response.status <= 499) {
      // What it said goes to the log once per call (reportRefusal), not into every turn's failure.
      settings.reportRefusal(request.callSid, response.status, await readExcerpt(response));
      throw new AgentError('status', `the agent at ${agentHost} refused the request: HTTP ${response.status}`, { status: response.status });
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

    const lines = new DatalessEvents();
    const events: EventSourceMessage[] = [];
    let parseFailure: ParseError | undefined;
    const parser = createParser({
      onEvent: (event) => events.push(event),
      // `: ping`: the agent's framework keeping the connection alive while it thinks.
      onComment: () => firstText.stillWorking(),
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
        parser.feed(lines.complete(data));
        if (parseFailure !== undefined || lines.pendingChars > MAX_SSE_BUFFER_CHARS) {
          throw new AgentError('malformed', `the agent at ${agentHost} sent an event larger than ${MAX_SSE_BUFFER_CHARS} characters`, {
            cause: parseFailure,
          });
        }
        for (const event of events.splice(0)) {
          const { text, end } = readEvent(event, agentHost);
          if (text === undefined) {
            firstText.stillWorking();
          } else {
            firstText.stop();
            spokeAtAll = true;
            yield text;
          }
          if (end) {
            if (!spokeAtAll) throw new AgentError('empty', `the agent at ${agentHost} finished without any text`);
            return;
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
    firstText.stop();
    link.abort();
  }
}

function requestBody(shape: AgentRequestShape, request: AgentRequest): Record<string, unknown> {
  if (shape === 'minimal') return { message: request.message };
  // `session_id` as well as `callSid`: agents built on common chat servers key memory on it.
  const body: Record<string, unknown> = { message: request.message, history: request.history, callSid: request.callSid, session_id: request.callSid };
  if (request.digits !== undefined) body.digits = request.digits;
  return body;
}

/**
 * The wait for the agent's first text: it aborts the request once the agent has
 * been silent that long. Anything the agent sends restarts it; the total deadline
 * is separate and never restarts.
 */
class FirstTextWait {
  readonly #timer: NodeJS.Timeout;
  #waiting = true;
  constructor(link: LinkedAbort, ms: number, message: string) {
    this.#timer = setTimeout(() => {
      this.#waiting = false;
      link.abort(new DOMException(message, 'TimeoutError'));
    }, ms);
  }

  stillWorking(): void {
    if (this.#waiting) this.#timer.refresh();
  }

  /** The first text came, or the reply is over: the wait ends. */
  stop(): void {
    this.#waiting = false;
    clearTimeout(this.#timer);
  }
}

/** One event, read: its text if it has any, and whether it ends the answer. */
interface AgentEvent {
  text: string | undefined;
  end: boolean;
}

const LIFE: AgentEvent = { text: undefined, end: false };
const END: AgentEvent = { text: undefined, end: true };

/**
 * One event, as docs/agent-contract.md lists them. `event: done` / `end` and the
 * usual payloads (`[DONE]`, `null`, `{"done": true}`) end the answer; `event: error`
 * is a failure; `{"text": "..."}` is text; other JSON objects and empty data are
 * keep-alives or status events.
 */
function readEvent(event: EventSourceMessage, agentHost: string): AgentEvent {
  if (event.event === 'done' || event.event === 'end') return END;
  if (event.event === 'error') {
    const said = reportedError(event.data);
    throw new AgentError('reported', `the agent at ${agentHost} reported an error${said === '' ? '' : `: ${said}`}`);
  }
  const data = event.data.trim();
  if (data === '') return LIFE;
  // `[DONE]`: the OpenAI-style end marker many agent servers send before closing.
  // https://platform.openai.com/docs/api-reference/chat/create#chat-create-stream
  if (data === '[DONE]') return END;
  let parsed: unknown;
  try {
    parsed = JSON.parse(data);
  } catch (error) {
    throw new AgentError('malformed', `the agent at ${agentHost} sent an event that is not JSON: ${excerptOf(data)}`, {
      cause: error,
    });
  }
  // `null`: what a Python agent's `json.dumps(None)` writes for its last chunk.
  if (parsed === null) return END;
  if (typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new AgentError('malformed', `the agent at ${agentHost} sent an event that is not a JSON object: ${excerptOf(data)}`);
  }
  const end = 'done' in parsed && parsed.done === true;
  if (!('text' in parsed)) return end ? END : LIFE;
  if (typeof parsed.text !== 'string') {
    throw new AgentError('malformed', `the agent at ${agentHost} sent a "text" that is not a string: ${excerptOf(data)}`);
  }
  return { text: parsed.text === '' ? undefined : parsed.text, end };
}

/** What an `event: error` says: its JSON `message` or `error` string, else its data as sent. */
function reportedError(data: string): string {
  try {
    const parsed: unknown = JSON.parse(data);
    if (typeof parsed === 'object' && parsed !== null) {
      const { message, error } = parsed as { message?: unknown; error?: unknown };
      if (typeof message === 'string') return excerptOf(message);
      if (typeof error === 'string') return excerptOf(error);
    }
  } catch {
    // Plain text: quoted as it is.
  }
  return excerptOf(data);
}

/**
 * Hands eventsource-parser whole lines, and gives a block that names an event but
 * has no `data` line an empty one. WHATWG's algorithm, which the parser follows,
 * drops such a block (a browser never sees it), but it is how an agent often says it
 * has finished: sse-starlette writes `ServerSentEvent(event="done")` as
 * `event: done\r\n\r\n`. Only the `event` and `data` field names are looked at here.
 *
 * @see https://html.spec.whatwg.org/multipage/server-sent-events.html#dispatchMessage
 * @see https://github.com/sysid/sse-starlette/blob/main/sse_starlette/event.py
 */
class DatalessEvents {
  /** A line not yet ended. */
  #pending = '';
  /** The last read ended in CR: a LF first in the next is the same CRLF. */
  #afterCr = false;
  #named = false;
  #hasData = false;

  get pendingChars(): number {
    return this.#pending.length;
  }

  /** The lines `text` completes, each ended by LF. */
  complete(text: string): string {
    if (text === '') return '';
    if (this.#afterCr && text.startsWith('\n')) text = text.slice(1);
    this.#afterCr = text.endsWith('\r');
    const lines = `${this.#pending}${text}`.split(/\r\n|\r|\n/);
    this.#pending = lines.pop()!;
    let whole = '';
    for (const line of lines) {
      if (line === '') {
        if (this.#named && !this.#hasData) whole += 'data:\n';
        this.#named = false;
        this.#hasData = false;
      } else {
        const colon = line.indexOf(':');
        const field = colon === -1 ? line : line.slice(0, colon);
        // `event:` with no name sets the type back to the default, `message`.
        if (field === 'event') this.#named = colon !== -1 && line.slice(colon + 1).trim() !== '';
        else if (field === 'data') this.#hasData = true;
      }
      whole += `${line}\n`;
    }
    return whole;
  }
}

/** The start of an error body, read no further than needed; empty if it cannot be read. */
async function readExcerpt(response: HttpAnswer): Promise<string> {
  return excerptOf(await readBodyPrefix(response.body, MAX_EXCERPT_CHARS + 1));
}

/**
 * A bounded, printable excerpt of what the agent sent: whitespace runs become one
 * space, control and format characters (terminal escapes, bidi overrides) become
 * U+FFFD, and it stops at MAX_EXCERPT_CHARS code points.
 */
function excerptOf(text: string): string {
  const flat = [...text.replace(/\s+/g, ' ').trim().replace(/[\p{Cc}\p{Cf}\p{Cs}]/gu, '\uFFFD')];
  return flat.length > MAX_EXCERPT_CHARS ? `${flat.slice(0, MAX_EXCERPT_CHARS).join('')}…` : flat.join('');
}
