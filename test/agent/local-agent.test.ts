import { describe, expect, it } from 'vitest';
import { AgentError, type AgentRequest } from '../../src/agent/agent.ts';
import { createLocalAgent } from '../../src/agent/local-agent.ts';

async function collect(chunks: AsyncIterable<string>): Promise<string[]> {
  const received: string[] = [];
  for await (const chunk of chunks) received.push(chunk);
  return received;
}

function turn(message: string, history: AgentRequest['history'] = []): AgentRequest {
  return { callSid: 'CA0001', message, history };
}

describe('built-in demo agent', () => {
  it('echoes the first message and explains how to connect a real agent, streamed in a few chunks', async () => {
    const agent = createLocalAgent();
    expect(agent.kind).toBe('local');
    const chunks = await collect(agent.reply(turn('I need a table for two'), AbortSignal.timeout(1000)));
    expect(chunks.length).toBeGreaterThan(2);
    expect(chunks.join('')).toBe(
      "You said: I need a table for two. I'm the built-in demo agent; set KOOZIE_AGENT_URI to connect a real one.",
    );
  });

  it('remembers the conversation: counts what the caller said and quotes the previous message', async () => {
    const agent = createLocalAgent();
    const history: AgentRequest['history'] = [
      { role: 'user', content: 'Hello there.' },
      { role: 'assistant', content: 'You said: Hello there. ...' },
      { role: 'user', content: 'I need a table for two' },
      { role: 'assistant', content: 'You said: I need a table for two. ...' },
    ];
    const answer = (await collect(agent.reply(turn('Tomorrow at eight?', history), AbortSignal.timeout(1000)))).join('');
    expect(answer).toBe(
      "You said: Tomorrow at eight. That's 3 things you've told me on this call. Earlier you said: I need a table for two.",
    );
  });

  it('answers the same turn the same way every time, in one to three short sentences', async () => {
    const agent = createLocalAgent();
    const history: AgentRequest['history'] = [{ role: 'user', content: 'Hi' }];
    const first = (await collect(agent.reply(turn('Are you open on Sunday?', history), AbortSignal.timeout(1000)))).join('');
    const second = (await collect(agent.reply(turn('Are you open on Sunday?', history), AbortSignal.timeout(1000)))).join('');
    expect(first).toBe(second);
    const sentences = first.split(/(?<=[.!?])\s+/);
    expect(sentences.length).toBeGreaterThanOrEqual(1);
    expect(sentences.length).toBeLessThanOrEqual(3);
  });

  it('shortens a long message when quoting it', async () => {
    const agent = createLocalAgent();
    const long = Array.from({ length: 40 }, (_, i) => `word${i}`).join(' ');
    const answer = (await collect(agent.reply(turn(long), AbortSignal.timeout(1000)))).join('');
    expect(answer).toContain('word11…');
    expect(answer).not.toContain('word12');
  });

  it('asks again when the message is empty', async () => {
    const agent = createLocalAgent();
    expect((await collect(agent.reply(turn('   '), AbortSignal.timeout(1000)))).join('')).toBe(
      "I didn't catch that. Could you say it again?",
    );
  });

  it("stops with 'aborted' when the caller's signal fires mid-answer", async () => {
    const agent = createLocalAgent();
    const controller = new AbortController();
    const received: string[] = [];
    let failure: unknown;
    try {
      for await (const chunk of agent.reply(turn('I need a table for two'), controller.signal)) {
        received.push(chunk);
        controller.abort();
      }
    } catch (error) {
      failure = error;
    }
    expect(received).toHaveLength(1);
    expect(failure).toBeInstanceOf(AgentError);
    expect((failure as AgentError).failure).toBe('aborted');
  });
});
