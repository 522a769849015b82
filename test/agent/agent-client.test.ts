import { Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AgentError, type AgentRequest } from '../../src/agent/agent.ts';
import { createAgentClient, type AgentClientOptions } from '../../src/agent/agent-client.ts';
import { createLogger } from '../../src/logger.ts';
import { STRICT_AGENT_COOKIE, startFakeAgent, type FakeAgent } from '../fakes/agent-server.ts';

const request: AgentRequest = {
  callSid: 'CA0001',
  message: 'What time do you open?',
  history: [
    { role: 'user', content: 'Hello' },
    { role: 'assistant', content: 'Hi! How can I help?' },
  ],
};

let agent: FakeAgent;
/** The client's log lines, parsed. */
let logs: Array<Record<string, unknown>>;
let rawLogs: string[];

beforeEach(async () => {
  agent = await startFakeAgent();
  logs = [];
  rawLogs = [];
});
afterEach(async () => {
  await agent.close();
});

async function collect(chunks: AsyncIterable<string>): Promise<string[]> {
  const received: string[] = [];
  for await (const chunk of chunks) received.push(chunk);
  return received;
}

/** Runs the reply to its end and returns the `AgentError` it fails with, plus the text that came first. */
async function failureOf(chunks: AsyncIterable<string>): Promise<{ error: AgentError; received: string[] }> {
  const received: string[] = [];
  try {
    for await (const chunk of chunks) received.push(chunk);
  } catch (error) {
    expect(error).toBeInstanceOf(AgentError);
    return { error: error as AgentError, received };
  }
  throw new Error(`expected the reply to fail, but it ended with ${JSON.stringify(received)}`);
}

const fastTimeouts = { firstTextTimeoutMs: 300, totalTimeoutMs: 600 };

/** A client of the fake agent that logs into `logs`. */
function clientOf(options: Partial<AgentClientOptions> = {}) {
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) {
        rawLogs.push(line);
        logs.push(JSON.parse(line) as Record<string, unknown>);
      }
      done();
    },
  });
  return createAgentClient({ baseUrl: agent.url, log: createLogger('debug', sink), ...options });
}

describe('remote agent client', () => {
  it('refuses, when it is made, an agent URI it cannot post to', () => {
    expect(() => clientOf({ baseUrl: 'ftp://agent.example.com' })).toThrow('the agent URI must be http or https, not ftp:');
    expect(() => clientOf({ baseUrl: 'not a url' })).toThrow(TypeError);
  });

  it('streams the answer chunk by chunk, in order', async () => {
    const client = clientOf();
    expect(client.kind).toBe('remote');
    const chunks = await collect(client.reply(request, AbortSignal.timeout(5000)));
    expect(chunks.length).toBeGreaterThan(1);
    expect(chunks.join('')).toBe('Agent heard: What time do you open? (history: 2)');
  });

  it('hands over the first chunk before the agent has sent the last one', async () => {
    agent.setBehaviour({ kind: 'reply', answer: () => 'one two three four five', chunkWords: 1, chunkDelayMs: 60 });
    const client = clientOf();
    const sentWhenReceived: number[] = [];
    const chunks: string[] = [];
    for await (const chunk of client.reply(request, AbortSignal.timeout(5000))) {
      sentWhenReceived.push(agent.sentChunks.length);
      chunks.push(chunk);
    }
    expect(chunks).toEqual(['one ', 'two ', 'three ', 'four ', 'five']);
    expect(sentWhenReceived[0]).toBeLessThan(5);
  });

  it('posts the message, the history and the call sid as JSON, asking for an event stream', async () => {
    const client = clientOf({ baseUrl: `${agent.url}/` });
    await collect(client.reply(request, AbortSignal.timeout(5000)));
    expect(agent.requests).toEqual([
      { message: request.message, history: request.history, callSid: 'CA0001', session_id: 'CA0001' },
    ]);
    expect(agent.headers[0]?.accept).toBe('text/event-stream');
    expect(agent.headers[0]?.['content-type']).toBe('application/json');
  });

  // How sse-starlette frames its events (CRLF); the agent keeps the stream open after each end signal.
  it.each([
    ['event: done, without data (sse-starlette\'s ServerSentEvent(event="done"))', 'event: done\r\n\r\n'],
    ['event: done, with data', 'event: done\r\ndata: {"reason": "stop"}\r\n\r\n'],
    ['event: end', 'event: end\r\ndata: \r\n\r\n'],
    ['data: [DONE]', 'data: [DONE]\r\n\r\n'],
    ['a {"done": true} payload', 'data: {"done": true}\r\n\r\n'],
    ['data: null', 'data: null\r\n\r\n'],
  ])('ends the answer at %s and hangs up, though the agent keeps the stream open', async (_name, endSignal) => {
    agent.setBehaviour({
      kind: 'sse',
      writes: [': ping\r\n\r\n', 'data: {"text": "Hello "}\r\n\r\n', 'data: {"type": "status"}\r\n\r\n', 'data: {"text": ""}\r\n\r\n', 'data: {"text": "there."}\r\n\r\n', endSignal],
      keepOpen: true,
    });
    // Were the end missed, the total bound (600 ms) would fail the reply as a timeout.
    const client = clientOf(fastTimeouts);
    expect(await collect(client.reply(request, AbortSignal.timeout(5000)))).toEqual(['Hello ', 'there.']);
    await vi.waitFor(() => expect(agent.hungUp()).toBe(1), { timeout: 1000 });
  });

  it('speaks the text of a {"done": true} event before ending there', async () => {
    agent.setBehaviour({ kind: 'sse', writes: ['data: {"text": "Hello "}\n\n', 'data: {"text": "there.", "done": true}\n\n'], keepOpen: true });
    const client = clientOf(fastTimeouts);
    expect(await collect(client.reply(request, AbortSignal.timeout(5000)))).toEqual(['Hello ', 'there.']);
  });

  it('sees an end signal that arrives split across the agent\'s writes', async () => {
    agent.setBehaviour({ kind: 'sse', writes: ['data: {"text": "Hello."}\r\n\r\n', 'event: do', 'ne\r', '\n\r', '\n'], delayMs: 20, keepOpen: true });
    const client = clientOf(fastTimeouts);
    expect(await collect(client.reply(request, AbortSignal.timeout(5000)))).toEqual(['Hello.']);
  });

  it.each([
    ['a JSON message', 'event: error\r\ndata: {"message": "tool lookup_order timed out"}\r\n\r\n', 'reported an error: tool lookup_order timed out'],
    ['plain text', 'event: error\r\ndata: upstream model overloaded\r\n\r\n', 'reported an error: upstream model overloaded'],
    ['no data', 'event: error\r\n\r\n', 'reported an error'],
  ])('fails as reported on event: error with %s, keeping the text before it', async (_name, errorEvent, said) => {
    agent.setBehaviour({ kind: 'sse', writes: ['data: {"text": "Let me check. "}\r\n\r\n', errorEvent], keepOpen: true });
    const client = clientOf(fastTimeouts);
    const { error, received } = await failureOf(client.reply(request, AbortSignal.timeout(5000)));
    expect(received).toEqual(['Let me check. ']);
    expect(error.failure).toBe('reported');
    expect(error.message).toMatch(new RegExp(`${said}$`));
  });

  it('posts the message alone with the minimal request shape', async () => {
    const client = clientOf({ requestShape: 'minimal' });
    await collect(client.reply(request, AbortSignal.timeout(5000)));
    expect(agent.requests).toEqual([{ message: request.message }]);
  });

  it('logs what a refusing agent said once per call, never its headers, and keeps it out of each turn\'s error', async () => {
    agent.setBehaviour({ kind: 'forbid-extra-fields', then: { kind: 'reply' } });
    const client = clientOf();
    for (const callSid of ['CA0001', 'CA0001', 'CA0001', 'CA0002']) {
      const { error } = await failureOf(client.reply({ ...request, callSid }, AbortSignal.timeout(5000)));
      expect(error.failure).toBe('status');
      expect(error.status).toBe(422);
      expect(error.message).toBe(`the agent at ${new URL(agent.url).host} refused the request: HTTP 422`);
    }
    const refusals = logs.filter((line) => line.message === 'the agent refused the request (logged once per call)');
    expect(refusals.map((line) => line.callSid)).toEqual(['CA0001', 'CA0002']);
    expect(refusals[0]).toMatchObject({ status: 422, severity: 'WARNING', hint: 'an agent that takes only {"message"} needs AGENT_REQUEST=minimal' });
    expect(refusals[0]?.agentSaid).toMatch(/^\{"detail":\[\{"type":"extra_forbidden","loc":\["body","history"\],"msg":"Extra inputs are not permitted"/);
    expect(rawLogs.join('\n')).not.toContain(STRICT_AGENT_COOKIE.split('=')[1]);

    // The same agent answers the minimal request.
    const minimal = clientOf({ requestShape: 'minimal' });
    expect((await collect(minimal.reply(request, AbortSignal.timeout(5000)))).join('')).toBe('Agent heard: What time do you open? (history: none)');
  });

  it('quotes a refusal printably and briefly: no terminal escapes, no bidi overrides', async () => {
    agent.setBehaviour({ kind: 'status', status: 400, body: `bad \u001b[31mred\u001b[0m \u202Eevil\u202C ${'x'.repeat(5000)}` });
    const client = clientOf({ requestShape: 'minimal' });
    await failureOf(client.reply(request, AbortSignal.timeout(5000)));
    const [refusal] = logs.filter((line) => line.status === 400);
    const said = String(refusal?.agentSaid);
    expect(said.startsWith('bad \uFFFD[31mred\uFFFD[0m \uFFFDevil\uFFFD xxx')).toBe(true);
    expect([...said].length).toBe(201);
    // No hint: the request was already minimal.
    expect(refusal?.hint).toBeUndefined();
  });

  it('fails with the status on a non-2xx answer, quoting only the start of the body', async () => {
    agent.setBehaviour({ kind: 'status', status: 500, body: `Internal error: ${'x'.repeat(5000)}` });
    const client = clientOf();
    const { error } = await failureOf(client.reply(request, AbortSignal.timeout(5000)));
    expect(error.failure).toBe('status');
    expect(error.status).toBe(500);
    expect(error.message).toContain('HTTP 500: Internal error');
    expect(error.message.length).toBeLessThan(300);
  });

  it('times out when the agent sends nothing within the first-text wait', async () => {
    agent.setBehaviour({ kind: 'hang' });
    const client = clientOf(fastTimeouts);
    const { error } = await failureOf(client.reply(request, AbortSignal.timeout(5000)));
    expect(error.failure).toBe('timeout');
    expect(error.message).toContain('no text and no keep-alive from the agent at 127.0.0.1');
    expect(error.message).toContain('within 300 ms');
  });

  it('waits past the first-text wait for an agent whose keep-alives show it is still working', async () => {
    // 800 ms of thinking against a 300 ms wait: comments and text-less events, 100 ms apart, restart it.
    const thinking = Array.from({ length: 8 }, (_, i) => (i % 2 === 0 ? ': ping - 2025-01-01 00:00:00\r\n\r\n' : 'data: {"status": "searching"}\r\n\r\n'));
    agent.setBehaviour({ kind: 'sse', writes: [...thinking, 'data: {"text": "Found it."}\r\n\r\n'], delayMs: 100 });
    const client = clientOf({ firstTextTimeoutMs: 300, totalTimeoutMs: 3000 });
    expect(await collect(client.reply(request, AbortSignal.timeout(5000)))).toEqual(['Found it.']);
  });

  it('gives up at the total bound however long the agent keeps pinging', async () => {
    agent.setBehaviour({ kind: 'sse', writes: Array.from({ length: 50 }, () => ': ping\r\n\r\n'), delayMs: 100, keepOpen: true });
    const client = clientOf({ firstTextTimeoutMs: 300, totalTimeoutMs: 800 });
    const { error } = await failureOf(client.reply(request, AbortSignal.timeout(5000)));
    expect(error.failure).toBe('timeout');
    expect(error.message).toContain('did not finish within 800 ms');
    await vi.waitFor(() => expect(agent.hungUp()).toBe(1), { timeout: 1000 });
  });

  it('times out at the total timeout when the agent stalls after its first chunk, keeping what it said', async () => {
    agent.setBehaviour({ kind: 'hang-after-first-chunk' });
    const client = clientOf(fastTimeouts);
    const started = Date.now();
    const { error, received } = await failureOf(client.reply(request, AbortSignal.timeout(5000)));
    expect(received).toEqual(['Agent heard: ']);
    expect(error.failure).toBe('timeout');
    expect(error.message).toContain('did not finish within 600 ms');
    expect(Date.now() - started).toBeLessThan(900);
  });

  it('hangs up on an agent that stalls, leaving no connection open', async () => {
    agent.setBehaviour({ kind: 'hang-after-first-chunk' });
    const client = clientOf(fastTimeouts);
    const { error } = await failureOf(client.reply(request, AbortSignal.timeout(5000)));
    expect(error.failure).toBe('timeout');
    await vi.waitFor(() => expect(agent.hungUp()).toBe(1), { timeout: 1000 });
  });

  it('hangs up when the turn stops listening early, and reuses the connection after a finished answer', async () => {
    agent.setBehaviour({ kind: 'reply', chunkDelayMs: 50 });
    const client = clientOf();
    for await (const chunk of client.reply(request, AbortSignal.timeout(5000))) {
      expect(chunk).toBe('Agent heard: ');
      break;
    }
    await vi.waitFor(() => expect(agent.hungUp()).toBe(1), { timeout: 1000 });
    agent.setBehaviour({ kind: 'reply' });
    await collect(client.reply(request, AbortSignal.timeout(5000)));
    await collect(client.reply(request, AbortSignal.timeout(5000)));
    expect(agent.hungUp()).toBe(1);
    // The connection hung up on is gone; the two finished answers shared one.
    expect(agent.connections()).toBe(2);
  });

  it('fails as malformed on an event that is not JSON', async () => {
    agent.setBehaviour({ kind: 'malformed' });
    const client = clientOf();
    const { error } = await failureOf(client.reply(request, AbortSignal.timeout(5000)));
    expect(error.failure).toBe('malformed');
    expect(error.message).toContain('not JSON: not json');
  });

  it('fails as malformed when "text" is not a string', async () => {
    agent.setBehaviour({ kind: 'events', data: ['{"text":42}'] });
    const client = clientOf();
    const { error } = await failureOf(client.reply(request, AbortSignal.timeout(5000)));
    expect(error.failure).toBe('malformed');
  });

  it('hands over the text so far when the connection closes mid-answer, then says it broke', async () => {
    agent.setBehaviour({ kind: 'close-mid-stream' });
    const client = clientOf();
    const { error, received } = await failureOf(client.reply(request, AbortSignal.timeout(5000)));
    expect(received).toEqual(['Agent heard: ']);
    expect(error.failure).toBe('broken');
    expect(error.message).toMatch(/broke mid-answer/);
  });

  it('fails as empty when the stream ends without any text', async () => {
    agent.setBehaviour({ kind: 'events', data: ['{"type":"ping"}'] });
    const client = clientOf();
    const { error } = await failureOf(client.reply(request, AbortSignal.timeout(5000)));
    expect(error.failure).toBe('empty');
  });

  it('fails as unreachable when the connection is refused', async () => {
    await agent.close();
    const client = clientOf();
    const { error } = await failureOf(client.reply(request, AbortSignal.timeout(5000)));
    expect(error.failure).toBe('unreachable');
    expect(error.cause).toBeDefined();
  });

  it("stops promptly with 'aborted' when the caller's signal fires", async () => {
    agent.setBehaviour({ kind: 'hang-after-first-chunk' });
    const client = clientOf();
    const controller = new AbortController();
    const started = Date.now();
    const { error, received } = await failureOf(
      (async function* () {
        for await (const chunk of client.reply(request, controller.signal)) {
          setTimeout(() => controller.abort(), 50);
          yield chunk;
        }
      })(),
    );
    expect(received).toHaveLength(1);
    expect(error.failure).toBe('aborted');
    expect(Date.now() - started).toBeLessThan(500);
  });

  it('answers each turn from its own script, so a failed turn does not affect the next', async () => {
    agent.setBehaviour((turn) =>
      turn.history?.length === 0 ? { kind: 'status', status: 503 } : { kind: 'reply', answer: () => 'Back again.' },
    );
    const client = clientOf();
    const first = await failureOf(client.reply({ ...request, history: [] }, AbortSignal.timeout(5000)));
    expect(first.error.status).toBe(503);
    expect((await collect(client.reply(request, AbortSignal.timeout(5000)))).join('')).toBe('Back again.');
    expect(agent.requests).toHaveLength(2);
  });
});
