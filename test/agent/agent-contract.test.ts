/**
 * The agent contract (docs/agent-contract.md) through the whole service: an agent that
 * thinks before its first word, the end signals agent servers send while they keep the
 * stream open, and a strict agent that refuses fields beside `message`. Real service on
 * loopback, the fake agent, the simulated Twilio; the caller hears `<Say>` (no ElevenLabs).
 */
import { describe, expect, it } from 'vitest';
import { PHRASES } from '../../machines/call.machine.ts';
import { STRICT_AGENT_COOKIE } from '../fakes/agent-server.ts';
import { useFakeBackends } from '../support/fake-backends.ts';
import { spoken, startService } from '../support/service.ts';

const fakes = useFakeBackends();

async function serviceWith(env: Record<string, string> = {}) {
  const running = await startService({ KOOZIE_AGENT_URI: fakes.agent.url, ...env });
  fakes.running.push(running);
  return running;
}

const REFUSAL = 'the agent refused the request (logged once per call)';

describe('the agent contract, through the service', () => {
  it('gives the caller the answer of an agent that thinks 9 s before its first word, after the hold line, with the default settings', async () => {
    // Real seconds: the old fixed 8 s first-text limit is the regression, so no smaller figure shows it.
    const svc = await serviceWith();
    fakes.agent.setBehaviour({ kind: 'reply', answer: () => 'Your order left the warehouse this morning.', firstChunkDelayMs: 9_000 });
    const call = svc.call();
    await call.dial();
    const turn = await call.say('Where is my order?');
    const said = spoken(turn.heard);
    expect(said[0]).toBe(PHRASES.hold);
    expect(said.at(-1)).toBe('Your order left the warehouse this morning.');
    expect(said).not.toContain(PHRASES.apology);
    // Held and redirected: no single webhook kept Twilio waiting for the agent.
    expect(turn.documents.length).toBeGreaterThan(1);
    const record = await svc.service.store.getRecord(call.callSid);
    expect(record?.turns[0]).toMatchObject({ reply: 'Your order left the warehouse this morning.' });
    expect(record?.turns[0]?.failure).toBeUndefined();
  });

  it('ends each answer at the agent\'s end signal though the stream stays open, and records none as cut', async () => {
    // Were an end signal missed, the turn would wait out AGENT_TIMEOUT_MS and be recorded as cut.
    const svc = await serviceWith({ AGENT_TIMEOUT_MS: '2000' });
    const endSignals = [
      'event: done\r\n\r\n',
      'event: done\r\ndata: {"reason": "stop"}\r\n\r\n',
      'event: end\r\n\r\n',
      'data: [DONE]\r\n\r\n',
      'data: {"done": true}\r\n\r\n',
      'data: null\r\n\r\n',
    ];
    const call = svc.call();
    await call.dial();
    for (const [turn, endSignal] of endSignals.entries()) {
      fakes.agent.setBehaviour({
        kind: 'sse',
        writes: [`data: {"text": "Answer ${turn + 1}, "}\r\n\r\n`, ': ping\r\n\r\n', 'data: {"text": "all of it."}\r\n\r\n', endSignal],
        keepOpen: true,
      });
      expect(spoken((await call.say(`Question ${turn + 1}`)).heard).join(' '), endSignal).toBe(`Answer ${turn + 1}, all of it.`);
    }
    const record = await svc.service.store.getRecord(call.callSid);
    expect(record?.turns.map((t) => ({ reply: t.reply, cut: t.cut, failure: t.failure }))).toEqual(
      endSignals.map((_, turn) => ({ reply: `Answer ${turn + 1}, all of it.`, cut: undefined, failure: undefined })),
    );
    // The service closed each stream itself.
    expect(fakes.agent.hungUp()).toBe(endSignals.length);
  });

  it('apologises for an event: error and records what the agent said', async () => {
    const svc = await serviceWith();
    fakes.agent.setBehaviour({ kind: 'sse', writes: ['event: error\r\ndata: {"message": "tool lookup_order timed out"}\r\n\r\n'], keepOpen: true });
    const call = svc.call();
    await call.dial();
    expect(spoken((await call.say('Where is my order?')).heard)).toEqual([PHRASES.apology]);
    const record = await svc.service.store.getRecord(call.callSid);
    expect(record?.turns[0]?.failure).toMatch(/^agent: the agent at .* reported an error: tool lookup_order timed out$/);
  });

  it('answers through a strict agent with AGENT_REQUEST=minimal, sending it the message alone', async () => {
    const svc = await serviceWith({ AGENT_REQUEST: 'minimal' });
    fakes.agent.setBehaviour({ kind: 'forbid-extra-fields', then: { kind: 'reply' } });
    const call = svc.call();
    await call.dial();
    expect(spoken((await call.say('Hello')).heard)).toEqual(['Agent heard: Hello (history: none)']);
    expect(spoken((await call.say('Still there?')).heard)).toEqual(['Agent heard: Still there? (history: none)']);
    expect(fakes.agent.requests).toEqual([{ message: 'Hello' }, { message: 'Still there?' }]);
  });

  it('logs what a strict agent said to the full request once per call, with the call sid and never its headers', async () => {
    const svc = await serviceWith();
    fakes.agent.setBehaviour({ kind: 'forbid-extra-fields', then: { kind: 'reply' } });
    const first = svc.call();
    await first.dial();
    for (const words of ['Hello', 'Hello?']) expect(spoken((await first.say(words)).heard)).toEqual([PHRASES.apology]);
    const second = svc.call();
    await second.dial();
    await second.say('Hi');

    const refusals = svc.logs.filter((line) => line.message === REFUSAL);
    expect(refusals.map((line) => line.callSid)).toEqual([first.callSid, second.callSid]);
    expect(refusals[0]).toMatchObject({ status: 422, hint: 'an agent that takes only {"message"} needs AGENT_REQUEST=minimal' });
    expect(String(refusals[0]?.agentSaid)).toContain('"msg":"Extra inputs are not permitted"');
    expect(svc.rawLogs.join('\n')).not.toContain(STRICT_AGENT_COOKIE.split('=')[1]);
    const record = await svc.service.store.getRecord(first.callSid);
    expect(record?.turns[0]?.failure).toMatch(/refused the request: HTTP 422$/);
  });
});
