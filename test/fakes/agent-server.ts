/**
 * A fake external agent: a real HTTP server on 127.0.0.1 that answers `POST /chat`
 * with Server-Sent Events the way a KOOZIE_AGENT_URI agent does, and misbehaves on
 * request (errors, hangs, garbage, dropped connections). Tests and benchmarks use
 * it so the agent client is exercised over real sockets, never through mocks.
 *
 * @see ../../src/agent/agent-client.ts
 * @see https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
 */
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import { setTimeout as delay } from 'node:timers/promises';
import { readBody, startLoopbackServer } from './loopback-server.ts';

/** The JSON body the agent client posts: `message` alone with AGENT_REQUEST=minimal, all of it with `full`. */
export interface FakeAgentRequest {
  message: string;
  history?: Array<{ role: 'user' | 'assistant'; content: string }>;
  callSid?: string;
  session_id?: string;
}

export type FakeAgentBehaviour =
  /** Streams the answer in word groups: `data: {"text":"..."}`, then closes. */
  | {
      kind: 'reply';
      /** Default: `Agent heard: <message> (history: <entries>)`. */
      answer?: (request: FakeAgentRequest) => string;
      firstChunkDelayMs?: number;
      chunkDelayMs?: number;
      /** Words per chunk; default 2. */
      chunkWords?: number;
    }
  /** Sends each text as `data: {"text":"..."}` once its delay (from the one before) has passed, then closes: an answer written in bursts. */
  | { kind: 'bursts'; bursts: Array<{ text: string; delayMs: number }> }
  /** Sends each string as one event's `data`, verbatim (pings, `[DONE]`, odd JSON). */
  | { kind: 'events'; data: string[]; delayMs?: number; /** Keep the stream open afterwards until `close()`. */ keepOpen?: boolean }
  /**
   * Writes each string to the stream verbatim, `delayMs` apart: whole SSE blocks
   * (`event: done\r\n\r\n`, `: ping\r\n\r\n`) or pieces of one, as a server's writes.
   */
  | { kind: 'sse'; writes: string[]; delayMs?: number; /** Keep the stream open afterwards until `close()`. */ keepOpen?: boolean }
  /**
   * A strict agent: a body with any field beside `message` gets FastAPI's 422 for a
   * Pydantic model with `extra="forbid"` (and a session cookie); otherwise `then`.
   * https://fastapi.tiangolo.com/tutorial/request-form-models/#forbid-extra-form-fields
   * https://docs.pydantic.dev/latest/errors/validation_errors/#extra_forbidden
   */
  | { kind: 'forbid-extra-fields'; then: FakeAgentBehaviour }
  | { kind: 'status'; status: number; body?: string }
  /** Reads the request and never answers. */
  | { kind: 'hang' }
  /** Sends one chunk, then nothing, never ending the response. */
  | { kind: 'hang-after-first-chunk' }
  /** `data: not json`. */
  | { kind: 'malformed' }
  /** Sends one chunk, then destroys the socket. */
  | { kind: 'close-mid-stream' };

export type FakeAgentScript = FakeAgentBehaviour | ((request: FakeAgentRequest) => FakeAgentBehaviour);

export interface FakeAgent {
  /** Base URL, as KOOZIE_AGENT_URI would be. */
  url: string;
  /** Every parsed JSON body received, in order. */
  requests: FakeAgentRequest[];
  /** The headers of every request received, in order. */
  headers: IncomingHttpHeaders[];
  /** How many answers the client hung up on before the agent had finished them. */
  hungUp(): number;
  /** How many connections the client has opened so far. */
  connections(): number;
  /** Every `text` sent so far, in order, across requests: lets a test see what the agent had sent when. */
  sentChunks: string[];
  setBehaviour(behaviour: FakeAgentScript): void;
  /** Stops listening and destroys open connections, hanging ones included. */
  close(): Promise<void>;
}

export function defaultAnswer(request: FakeAgentRequest): string {
  return `Agent heard: ${request.message} (history: ${request.history?.length ?? 'none'})`;
}

/** The session cookie the strict agent sets on its 422: a header the service must never log. */
export const STRICT_AGENT_COOKIE = 'agent_session=fake-agent-cookie-0123456789';

export async function startFakeAgent(options: { behaviour?: FakeAgentScript } = {}): Promise<FakeAgent> {
  let script: FakeAgentScript = options.behaviour ?? { kind: 'reply' };
  const requests: FakeAgentRequest[] = [];
  const headers: IncomingHttpHeaders[] = [];
  const sentChunks: string[] = [];
  let hungUp = 0;

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (req.method !== 'POST' || req.url !== '/chat') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    let request: FakeAgentRequest;
    try {
      request = JSON.parse(await readBody(req)) as FakeAgentRequest;
    } catch {
      res.writeHead(400, { 'content-type': 'text/plain' }).end('body is not JSON');
      return;
    }
    requests.push(request);
    headers.push(req.headers);
    res.once('close', () => {
      if (!res.writableFinished) hungUp += 1;
    });
    let behaviour = typeof script === 'function' ? script(request) : script;
    if (behaviour.kind === 'forbid-extra-fields') {
      const extra = Object.entries(request).filter(([field]) => field !== 'message');
      if (extra.length > 0) {
        const detail = extra.map(([field, input]) => ({ type: 'extra_forbidden', loc: ['body', field], msg: 'Extra inputs are not permitted', input }));
        res.writeHead(422, { 'content-type': 'application/json', 'set-cookie': STRICT_AGENT_COOKIE }).end(JSON.stringify({ detail }));
        return;
      }
      behaviour = behaviour.then;
    }
    const live = (): boolean => !res.destroyed;
    const startStream = (): void => {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      res.flushHeaders();
    };
    const sendText = (text: string): void => {
      sentChunks.push(text);
      res.write(`data: ${JSON.stringify({ text })}\n\n`);
    };

    switch (behaviour.kind) {
      case 'reply': {
        const chunks = chunkWords((behaviour.answer ?? defaultAnswer)(request), behaviour.chunkWords ?? 2);
        if (behaviour.firstChunkDelayMs) await delay(behaviour.firstChunkDelayMs);
        if (!live()) return;
        startStream();
        for (const [index, chunk] of chunks.entries()) {
          if (index > 0 && behaviour.chunkDelayMs) await delay(behaviour.chunkDelayMs);
          if (!live()) return;
          sendText(chunk);
        }
        res.end();
        return;
      }
      case 'bursts': {
        startStream();
        for (const burst of behaviour.bursts) {
          if (burst.delayMs > 0) await delay(burst.delayMs);
          if (!live()) return;
          sendText(burst.text);
        }
        res.end();
        return;
      }
      case 'events': {
        startStream();
        for (const data of behaviour.data) {
          if (behaviour.delayMs) await delay(behaviour.delayMs);
          if (!live()) return;
          res.write(`data: ${data}\n\n`);
        }
        if (!behaviour.keepOpen) res.end();
        return;
      }
      case 'sse': {
        startStream();
        for (const text of behaviour.writes) {
          if (behaviour.delayMs) await delay(behaviour.delayMs);
          if (!live()) return;
          res.write(text);
        }
        if (!behaviour.keepOpen) res.end();
        return;
      }
      case 'forbid-extra-fields':
        throw new Error('a strict agent wraps another behaviour, not itself');
      case 'status':
        res.writeHead(behaviour.status, { 'content-type': 'text/plain' }).end(behaviour.body ?? `fake agent error ${behaviour.status}`);
        return;
      case 'hang':
        return;
      case 'hang-after-first-chunk':
        startStream();
        sendText(chunkWords(defaultAnswer(request), 2)[0] ?? 'Agent');
        return;
      case 'malformed':
        startStream();
        res.end('data: not json\n\n');
        return;
      case 'close-mid-stream':
        startStream();
        sendText(chunkWords(defaultAnswer(request), 2)[0] ?? 'Agent');
        // Let the chunk reach the client before the connection dies without a final chunk.
        await delay(30);
        res.socket?.destroy();
        return;
    }
  }

  const server = await startLoopbackServer(handle);

  return {
    url: server.url,
    requests,
    headers,
    hungUp: () => hungUp,
    connections: () => server.connections(),
    sentChunks,
    setBehaviour(behaviour) {
      script = behaviour;
    },
    close: () => server.close(),
  };
}

/** Splits an answer into groups of words; concatenated, the chunks give the answer back. */
function chunkWords(answer: string, wordsPerChunk: number): string[] {
  const words = answer.split(' ');
  const chunks: string[] = [];
  for (let start = 0; start < words.length; start += wordsPerChunk) {
    const end = start + wordsPerChunk;
    chunks.push(words.slice(start, end).join(' ') + (end < words.length ? ' ' : ''));
  }
  return chunks;
}
