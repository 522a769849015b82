/**
 * The simulated Twilio (SimulatedCall) against the real service on loopback,
 * when `/voice` answers `<Connect action><ConversationRelay>`
 * (CALL_TRANSPORT=relay): it opens the session the TwiML names, the caller's
 * turns go over the socket, and when the session ends it requests the
 * `<Connect action>` URL as Twilio does and goes on with its TwiML. The agent is
 * the loopback fake; the requests SimulatedCall sends are read off the `fetch`
 * it is given, which passes them on unchanged.
 */
import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { PHRASES } from '../../machines/call.machine.ts';
import { useFakeBackends } from '../support/fake-backends.ts';
import { startService, type RunningService } from '../support/service.ts';
import type { FakeAgentBehaviour } from '../fakes/agent-server.ts';

const fakes = useFakeBackends();

async function relayService(): Promise<RunningService> {
  const svc = await startService({ CALL_TRANSPORT: 'relay', KOOZIE_AGENT_URI: fakes.agent.url });
  fakes.running.push(svc);
  return svc;
}

/** A `fetch` that keeps every form the call posts, by path, and sends it on. */
function recordingFetch() {
  const posted: Array<{ path: string; form: Record<string, string> }> = [];
  const fetch: typeof globalThis.fetch = (input, init) => {
    if (init?.method === 'POST') posted.push({ path: new URL(String(input)).pathname, form: Object.fromEntries(new URLSearchParams(String(init.body))) });
    return globalThis.fetch(input, init);
  };
  return { fetch, posted };
}

/** An answer the agent starts and never finishes: only an interruption (or a drop) ends it. */
const ENDLESS: FakeAgentBehaviour = {
  kind: 'events',
  data: [JSON.stringify({ text: 'We are open from nine' }), JSON.stringify({ text: ' to five on weekdays,' })],
  keepOpen: true,
};

describe('SimulatedCall on ConversationRelay', () => {
  it('opens the session /voice names, hears the greeting, takes turns over the socket and, after `end`, follows the action URL to the hang-up', async () => {
    const svc = await relayService();
    const { fetch, posted } = recordingFetch();
    const call = svc.call({ fetch });

    const greeting = await call.dial();
    expect(greeting.heard).toEqual([{ verb: 'ConversationRelay', text: PHRASES.greeting, from: 'welcomeGreeting', ending: 'last' }]);
    expect(call.relaySession?.callSid).toBe(call.callSid);

    const first = await call.say('What are your opening hours?');
    expect(first.heard).toEqual([{ verb: 'ConversationRelay', text: 'Agent heard: What are your opening hours? (history: 0)', from: 'text', ending: 'last' }]);
    expect(first.documents).toEqual([]);
    const tokens = call.relaySession!.received.filter((m) => m.type === 'text');
    expect(tokens.length).toBeGreaterThan(2);

    const key = await call.press('5');
    expect(key.heard.map((h) => 'text' in h && h.text)).toEqual(['Agent heard: 5 (history: 2)']);
    expect(fakes.agent.requests.at(-1)).toMatchObject({ message: '5', digits: '5' });

    const silence = await call.say(null);
    expect(silence.heard.map((h) => 'text' in h && h.text)).toEqual([PHRASES.reprompt]);

    const session = call.relaySession!;
    const bye = await call.say('Thanks, goodbye!');
    expect(bye.heard).toEqual([{ verb: 'Say', text: PHRASES.goodbye }, { verb: 'Hangup' }]);
    expect(bye.ended).toBe(true);
    expect(call.relaySession).toBeUndefined();
    expect((await session.closed).by).toBe('twilio');

    const action = posted.filter((p) => p.path === '/relay-ended');
    expect(action).toHaveLength(1);
    expect(action[0]!.form).toMatchObject({ CallSid: call.callSid, SessionId: session.sessionId, SessionStatus: 'completed' });
    expect(action[0]!.form.SessionDuration).toMatch(/^\d+$/);
    expect(JSON.parse(action[0]!.form.HandoffData!)).toMatchObject({ reason: 'goodbye' });
    expect(bye.documents).toHaveLength(1);

    await expect(call.say('hello?')).rejects.toThrow('the call has ended');
    expect(await call.hangUp()).toBe(200);
    expect(await svc.service.store.getRecord(call.callSid)).toMatchObject({ state: 'ended', endReason: 'goodbye' });
  });

  it('interrupts the answer being spoken with what arrived of it, then says the new words', async () => {
    const svc = await relayService();
    fakes.agent.setBehaviour((request) => (request.message === 'When are you open?' ? ENDLESS : { kind: 'reply' }));
    const call = svc.call();
    await call.dial();

    const asked = call.say('When are you open?');
    await expect.poll(() => call.speaking, { timeout: 5_000 }).toBe('We are open from nine to five on weekdays,');
    const next = await call.interrupt('What about Saturdays?');

    expect((await asked).heard).toEqual([{ verb: 'ConversationRelay', text: 'We are open from nine to five on weekdays,', from: 'text', ending: 'interrupted' }]);
    expect(next.heard.map((h) => 'text' in h && h.text)).toEqual(['Agent heard: What about Saturdays? (history: 2)']);
    expect(fakes.agent.hungUp()).toBe(1);
    expect(fakes.agent.requests.at(-1)?.history).toEqual([
      { role: 'user', content: 'When are you open?' },
      { role: 'assistant', content: 'We are open from nine to five on weekdays,' },
    ]);
    expect(call.speaking).toBeUndefined();
    await expect(call.interrupt('Hello?')).rejects.toThrow('nothing is being said to interrupt');
  });

  it('after the service drops the socket mid-answer, reports the session failed to the action URL and goes on in the session its TwiML connects', async () => {
    const svc = await relayService();
    const sockets: Socket[] = [];
    svc.service.app.server.on('upgrade', (_request, socket: Socket) => sockets.push(socket));
    fakes.agent.setBehaviour((request) => (request.message === 'Where is my order?' ? ENDLESS : { kind: 'reply' }));
    const { fetch, posted } = recordingFetch();
    const call = svc.call({ fetch });
    await call.dial();
    await call.say('My order number is 427.');

    const asked = call.say('Where is my order?');
    await expect.poll(() => call.speaking, { timeout: 5_000 }).toContain('weekdays,');
    const first = call.relaySession!;
    sockets[0]!.destroy();

    const cut = await asked;
    expect(cut.heard).toEqual([
      { verb: 'ConversationRelay', text: 'We are open from nine to five on weekdays,', from: 'text', ending: 'closed' },
      { verb: 'ConversationRelay', text: PHRASES.resumed, from: 'welcomeGreeting', ending: 'last' },
    ]);
    expect((await first.closed).by).toBe('service');
    const action = posted.find((p) => p.path === '/relay-ended');
    expect(action?.form).toMatchObject({ CallSid: call.callSid, SessionId: first.sessionId, SessionStatus: 'failed', ErrorCode: '64105' });
    expect(call.relaySession).toBeDefined();
    expect(call.relaySession).not.toBe(first);

    const again = await call.say('Where is my order, please?');
    expect(again.heard.map((h) => 'text' in h && h.text)).toEqual(['Agent heard: Where is my order, please? (history: 2)']);
    expect(fakes.agent.requests.at(-1)?.history?.[0]).toEqual({ role: 'user', content: 'My order number is 427.' });
  });

  it('presses keys at a <Gather> as Digits, on the webhook transport', async () => {
    const svc = await startService({ KOOZIE_AGENT_URI: fakes.agent.url });
    fakes.running.push(svc);
    const call = svc.call();
    await call.dial();
    const key = await call.press('7');
    expect(key.heard.map((h) => 'text' in h && h.text)).toEqual(['Agent heard: 7 (history: 0)']);
    expect(fakes.agent.requests.at(-1)).toMatchObject({ message: '7', digits: '7' });
  });
});
