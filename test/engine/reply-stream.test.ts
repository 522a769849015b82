/**
 * One answer on its way to the caller, against the loopback fake agent: an
 * answer longer than MAX_REPLY_CHARS is cut there, the agent's connection closed.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAgentClient } from '../../src/agent/agent-client.ts';
import { MAX_REPLY_CHARS, ReplyStream } from '../../src/engine/reply-stream.ts';
import { createLogger } from '../../src/logger.ts';
import { startFakeAgent, type FakeAgent } from '../fakes/agent-server.ts';

let agent: FakeAgent;
beforeAll(async () => {
  agent = await startFakeAgent();
});
afterAll(async () => {
  await agent.close();
});

describe('a reply stream', () => {
  it(`keeps at most ${MAX_REPLY_CHARS} characters of an endless answer, says it was cut, and hangs up on the agent`, async () => {
    const word = 'blah ';
    agent.setBehaviour({ kind: 'reply', answer: () => word.repeat(4_000), chunkWords: 50, chunkDelayMs: 5 });
    const client = createAgentClient({ baseUrl: agent.url, log: createLogger('silent') });
    const stream = new ReplyStream({
      agent: client,
      request: { callSid: `CA${'4'.repeat(32)}`, message: 'Tell me everything.', history: [] },
      voice: undefined,
      audioId: (i) => `p${i}`,
      mode: 'sentences',
      timeoutMs: 10_000,
      now: Date.now,
    });
    await stream.until(() => stream.finished, new AbortController().signal);
    const text = stream.chunks.join('');
    expect(text.length).toBe(MAX_REPLY_CHARS);
    expect(stream.pieces.map((p) => p.text).join(' ').length).toBeLessThanOrEqual(MAX_REPLY_CHARS);
    expect(String(stream.error)).toContain(`ran past ${MAX_REPLY_CHARS} characters`);
    await expect.poll(() => agent.hungUp()).toBe(1);
  });
});
