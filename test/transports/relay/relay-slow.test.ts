/**
 * A slow agent on a ConversationRelay call, against the real service on loopback
 * with small waits: WEBHOOK_DEADLINE_MS is how long the caller waits for the
 * agent's first words before the machine hears the turn is slow (SLOW), and
 * AGENT_TIMEOUT_MS how long a turn may take at all. What the caller hears is the
 * machine's: the hold line the first time they wait in a turn, sent as one `text`
 * (Twilio speaks it), silence on the later waits, then the agent's words; past the
 * turn's deadline, the apology, and the call goes on.
 *
 * @see https://www.twilio.com/docs/voice/conversationrelay/websocket-messages#text-tokens-message
 */
import { describe, expect, it } from 'vitest';
import { PHRASES } from '../../../machines/call.machine.ts';
import type { ServiceMessage } from '../../../src/transports/relay/messages.ts';
import { useFakeBackends } from '../../support/fake-backends.ts';
import { dialRelay } from '../../support/relay-call.ts';
import { startService, type RunningService } from '../../support/service.ts';

const fakes = useFakeBackends();

/** The session's wait for the agent's first words. */
const WAIT_MS = 150;

async function relayService(env: Record<string, string>): Promise<RunningService> {
  const svc = await startService({ CALL_TRANSPORT: 'relay', KOOZIE_AGENT_URI: fakes.agent.url, WEBHOOK_DEADLINE_MS: String(WAIT_MS), ...env });
  fakes.running.push(svc);
  return svc;
}

/** The `text` messages Twilio got, as [token, last]. */
function textsOf(messages: ServiceMessage[]): Array<[string, boolean]> {
  return messages.flatMap((m) => (m.type === 'text' ? [[m.token, m.last ?? false] as [string, boolean]] : []));
}

describe('a slow agent on a ConversationRelay call', () => {
  it('an agent silent past the wait: the caller hears the hold line once, as text, then the answer as it is written; again once in the next slow turn', async () => {
    const svc = await relayService({ AGENT_TIMEOUT_MS: '20000' });
    // Silent for about seven of the session's waits, then the answer in two-word chunks.
    fakes.agent.setBehaviour({ kind: 'reply', firstChunkDelayMs: 7 * WAIT_MS });
    const call = await dialRelay(svc.address);

    call.session.prompt('Can you check my order?');
    const hold = await call.session.nextAnswer();
    expect(hold).toMatchObject({ text: PHRASES.hold, tokens: [PHRASES.hold], ending: 'last' });
    const answer = await call.session.nextAnswer();
    expect(answer.text).toBe('Agent heard: Can you check my order? (history: 0)');
    // Hold line once (the later waits are silent), then the agent's chunks, then the end of the reply.
    expect(textsOf(call.session.received)).toEqual([
      [PHRASES.hold, true],
      ['Agent heard: ', false],
      ['Can you ', false],
      ['check my ', false],
      ['order? (history: ', false],
      ['0)', false],
      ['', true],
    ]);

    // The next turn is slow too: its own wait gets the hold line, once.
    call.session.prompt('And when will it arrive?');
    expect((await call.session.nextAnswer()).text).toBe(PHRASES.hold);
    expect((await call.session.nextAnswer()).text).toBe('Agent heard: And when will it arrive? (history: 2)');
    expect(textsOf(call.session.received).filter(([token]) => token === PHRASES.hold)).toHaveLength(2);

    await expect.poll(async () => (await svc.service.store.getRecord(call.callSid))?.state).toBe('listening');
    const record = await svc.service.store.getRecord(call.callSid);
    expect(record?.turns.map((t) => [t.caller, t.reply, t.failure])).toEqual([
      ['Can you check my order?', answer.text, undefined],
      ['And when will it arrive?', 'Agent heard: And when will it arrive? (history: 2)', undefined],
    ]);
    expect(record?.turns[0]?.agentFirstChunkMs).toBeGreaterThanOrEqual(7 * WAIT_MS);
  });

  it('an agent that never answers within AGENT_TIMEOUT_MS: the caller hears the hold line, then the apology as text, and the call goes on', async () => {
    const svc = await relayService({ AGENT_TIMEOUT_MS: '1000' });
    fakes.agent.setBehaviour((request) => (request.message === 'Are you there?' ? { kind: 'hang' } : { kind: 'reply' }));
    const call = await dialRelay(svc.address);

    call.session.prompt('Are you there?');
    expect((await call.session.nextAnswer()).text).toBe(PHRASES.hold);
    const apology = await call.session.nextAnswer();
    expect(apology).toMatchObject({ text: PHRASES.apology, ending: 'last' });
    // Its connection is closed: nobody waits for that answer any more.
    await expect.poll(() => fakes.agent.hungUp(), { timeout: 3_000 }).toBe(1);
    expect(textsOf(call.session.received)).toEqual([
      [PHRASES.hold, true],
      [PHRASES.apology, true],
    ]);
    expect(call.session.ends).toEqual([]);

    // The caller says it again: the turn that failed is not in the agent's history.
    call.session.prompt('Hello?');
    expect((await call.session.nextAnswer()).text).toBe('Agent heard: Hello? (history: 0)');
    await expect.poll(async () => (await svc.service.store.getRecord(call.callSid))?.turns.at(-1)?.reply).toBe('Agent heard: Hello? (history: 0)');
    const record = await svc.service.store.getRecord(call.callSid);
    expect(record?.state).toBe('listening');
    expect(record?.turns[0]).toMatchObject({ caller: 'Are you there?' });
    expect(record?.turns[0]?.failure).toMatch(/^agent: /);
    expect(record?.turns[0]?.reply).toBeUndefined();
    expect(record?.path.map((p) => p.state)).toEqual(['greeting', 'speaking', 'listening', 'thinking', 'errorFallback', 'speaking', 'listening', 'thinking', 'speaking', 'listening']);
  });
});
