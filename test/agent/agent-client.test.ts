import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AgentError, type AgentRequest } from '../../src/agent/agent.ts';
import { createAgentClient } from '../../src/agent/agent-client.ts';
import { startFakeAgent, type FakeAgent } from '../fakes/agent-server.ts';

const request: AgentRequest = {
  callSid: 'CA0001',
  message: 'What time do you open?',
  history: [
    { role: 'user', content: 'Hello' },
    { role: 'assistant', content: 'Hi! How can I help?' },
  ],
};

let agent: FakeAgent;

beforeEach(async () => {
  agent = await startFakeAgent();
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

const fastTimeouts = { firstChunkTimeoutMs: 300, totalTimeoutMs: 600 };

describe('remote agent client', () => {
  it('refuses, when it is made, an agent URI it cannot post to', () => {
    expect(() => createAgentClient({ baseUrl: 'ftp://agent.example.com' })).toThrow('the agent URI must be http or https, not ftp:');
    expect(() => createAgentClient({ baseUrl: 'not a url' })).toThrow(TypeError);
  });

  it('streams the answer chunk by chunk, in order', async () => {
    const client = createAgentClient({ baseUrl: agent.url });
    expect(client.kind).toBe('remote');
    const chunks = await collect(client.reply(request, AbortSignal.timeout(5000)));
    expect(chunks.length).toBeGreaterThan(1);
    expect(chunks.join('')).toBe('Agent heard: What time do you open? (history: 2)');
  });

  it('hands over the first chunk before the agent has sent the last one', async () => {
    agent.setBehaviour({ kind: 'reply', answer: () => 'one two three four five', chunkWords: 1, chunkDelayMs: 60 });
    const client = createAgentClient({ baseUrl: agent.url });
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
    const client = createAgentClient({ baseUrl: `${agent.url}/` });
    await collect(client.reply(request, AbortSignal.timeout(5000)));
    expect(agent.requests).toEqual([
      { message: request.message, history: request.history, callSid: 'CA0001', session_id: 'CA0001' },
    ]);
    expect(agent.headers[0]?.accept).toBe('text/event-stream');
    expect(agent.headers[0]?.['content-type']).toBe('application/json');
  });

  it('skips events without text and stops at [DONE] even if the agent keeps the stream open', async () => {
    agent.setBehaviour({
      kind: 'events',
      data: ['{"type":"ping"}', '{"text":"Hello "}', '{"type":"ping"}', '{"text":""}', '{"text":"there."}', '[DONE]'],
      keepOpen: true,
    });
    const client = createAgentClient({ baseUrl: agent.url, ...fastTimeouts });
    const started = Date.now();
    expect(await collect(client.reply(request, AbortSignal.timeout(5000)))).toEqual(['Hello ', 'there.']);
    expect(Date.now() - started).toBeLessThan(300);
  });

  it('fails with the status on a non-2xx answer, quoting only the start of the body', async () => {
    agent.setBehaviour({ kind: 'status', status: 500, body: `Internal error: ${'x'.repeat(5000)}` });
    const client = createAgentClient({ baseUrl: agent.url });
    const { error } = await failureOf(client.reply(request, AbortSignal.timeout(5000)));
    expect(error.failure).toBe('status');
    expect(error.status).toBe(500);
    expect(error.message).toContain('HTTP 500: Internal error');
    expect(error.message.length).toBeLessThan(300);
  });

  it('times out when the agent sends nothing within the first-chunk timeout', async () => {
    agent.setBehaviour({ kind: 'hang' });
    const client = createAgentClient({ baseUrl: agent.url, ...fastTimeouts });
    const started = Date.now();
    const { error } = await failureOf(client.reply(request, AbortSignal.timeout(5000)));
    expect(error.failure).toBe('timeout');
    expect(error.message).toContain('within 300 ms');
    expect(Date.now() - started).toBeLessThan(550);
  });

  it('times out at the total timeout when the agent stalls after its first chunk, keeping what it said', async () => {
    agent.setBehaviour({ kind: 'hang-after-first-chunk' });
    const client = createAgentClient({ baseUrl: agent.url, ...fastTimeouts });
    const started = Date.now();
    const { error, received } = await failureOf(client.reply(request, AbortSignal.timeout(5000)));
    expect(received).toEqual(['Agent heard: ']);
    expect(error.failure).toBe('timeout');
    expect(error.message).toContain('did not finish within 600 ms');
    expect(Date.now() - started).toBeLessThan(900);
  });

  it('hangs up on an agent that stalls, leaving no connection open', async () => {
    agent.setBehaviour({ kind: 'hang-after-first-chunk' });
    const client = createAgentClient({ baseUrl: agent.url, ...fastTimeouts });
    const { error } = await failureOf(client.reply(request, AbortSignal.timeout(5000)));
    expect(error.failure).toBe('timeout');
    await vi.waitFor(() => expect(agent.hungUp()).toBe(1), { timeout: 1000 });
  });

  it('hangs up when the turn stops listening early, and reuses the connection after a finished answer', async () => {
    agent.setBehaviour({ kind: 'reply', chunkDelayMs: 50 });
    const client = createAgentClient({ baseUrl: agent.url });
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
    const client = createAgentClient({ baseUrl: agent.url });
    const { error } = await failureOf(client.reply(request, AbortSignal.timeout(5000)));
    expect(error.failure).toBe('malformed');
    expect(error.message).toContain('not JSON: not json');
  });

  it('fails as malformed when "text" is not a string', async () => {
    agent.setBehaviour({ kind: 'events', data: ['{"text":42}'] });
    const client = createAgentClient({ baseUrl: agent.url });
    const { error } = await failureOf(client.reply(request, AbortSignal.timeout(5000)));
    expect(error.failure).toBe('malformed');
  });

  it('hands over the text so far when the connection closes mid-answer, then says it broke', async () => {
    agent.setBehaviour({ kind: 'close-mid-stream' });
    const client = createAgentClient({ baseUrl: agent.url });
    const { error, received } = await failureOf(client.reply(request, AbortSignal.timeout(5000)));
    expect(received).toEqual(['Agent heard: ']);
    expect(error.failure).toBe('broken');
    expect(error.message).toMatch(/broke mid-answer/);
  });

  it('fails as empty when the stream ends without any text', async () => {
    agent.setBehaviour({ kind: 'events', data: ['{"type":"ping"}'] });
    const client = createAgentClient({ baseUrl: agent.url });
    const { error } = await failureOf(client.reply(request, AbortSignal.timeout(5000)));
    expect(error.failure).toBe('empty');
  });

  it('fails as unreachable when the connection is refused', async () => {
    await agent.close();
    const client = createAgentClient({ baseUrl: agent.url });
    const { error } = await failureOf(client.reply(request, AbortSignal.timeout(5000)));
    expect(error.failure).toBe('unreachable');
    expect(error.cause).toBeDefined();
  });

  it("stops promptly with 'aborted' when the caller's signal fires", async () => {
    agent.setBehaviour({ kind: 'hang-after-first-chunk' });
    const client = createAgentClient({ baseUrl: agent.url });
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
      turn.history.length === 0 ? { kind: 'status', status: 503 } : { kind: 'reply', answer: () => 'Back again.' },
    );
    const client = createAgentClient({ baseUrl: agent.url });
    const first = await failureOf(client.reply({ ...request, history: [] }, AbortSignal.timeout(5000)));
    expect(first.error.status).toBe(503);
    expect((await collect(client.reply(request, AbortSignal.timeout(5000)))).join('')).toBe('Back again.');
    expect(agent.requests).toHaveLength(2);
  });
});
