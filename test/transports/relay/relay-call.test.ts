/**
 * Whole calls over ConversationRelay, against the real service on loopback: the
 * simulated Twilio signs `/voice`, opens the socket it names with a signed
 * upgrade, speaks, interrupts, presses keys and hangs up as Twilio's
 * ConversationRelay does; the agent is the loopback fake.
 */
import { WebSocket } from 'ws';
import { describe, expect, it } from 'vitest';
import { PHRASES } from '../../../machines/call.machine.ts';
import { RelayUpgradeRefused, SimulatedRelaySession } from '../../../src/phone/relay-caller.ts';
import { parseTwiml } from '../../../src/phone/twilio-caller.ts';
import { useFakeBackends } from '../../support/fake-backends.ts';
import { dialRelay, openSession, sessionEnded, targetOf, twilioPost } from '../../support/relay-call.ts';
import { AUTH_TOKEN, PUBLIC_BASE_URL, startService, type RunningService } from '../../support/service.ts';

const fakes = useFakeBackends();

async function relayService(env: Record<string, string> = {}): Promise<RunningService> {
  const svc = await startService({ CALL_TRANSPORT: 'relay', KOOZIE_AGENT_URI: fakes.agent.url, ...env });
  fakes.running.push(svc);
  return svc;
}

async function recordOf(svc: RunningService, callSid: string) {
  for (let i = 0; i < 100; i++) {
    const record = await svc.service.store.getRecord(callSid);
    if (record && !record.worker) return record;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return svc.service.store.getRecord(callSid);
}

function verbsOf(twiml: string): string[] {
  return parseTwiml(twiml).flatMap((node) => Object.keys(node).filter((k) => k !== ':@' && k !== '#text'));
}

describe('a call over ConversationRelay', () => {
  it('answers /voice with <Connect><ConversationRelay> greeting the caller, and streams the agent’s words as they arrive', async () => {
    const svc = await relayService({ RELAY_LANGUAGE: 'en-GB', RELAY_TTS_PROVIDER: 'ElevenLabs', RELAY_VOICE: 'UgBBYS2sOqTuMpoF3BR0' });
    const call = await dialRelay(svc.address);
    expect(call.connect.url).toBe('wss://voice.example.test/relay');
    expect(call.connect.action).toBe(`${PUBLIC_BASE_URL}/relay-ended`);
    expect(call.connect.attributes).toMatchObject({
      welcomeGreeting: PHRASES.greeting,
      language: 'en-GB',
      ttsProvider: 'ElevenLabs',
      voice: 'UgBBYS2sOqTuMpoF3BR0',
      interruptible: 'any',
      dtmfDetection: 'true',
    });

    call.session.prompt('What are your opening hours?');
    const first = await call.session.nextAnswer();
    expect(first.text).toBe('Agent heard: What are your opening hours? (history: 0)');
    // Forwarded as the agent wrote it, chunk by chunk, not one sentence at a time.
    expect(first.tokens.filter((t) => t !== '').length).toBeGreaterThan(1);
    expect(first.ending).toBe('last');

    call.session.prompt('And on Sundays?');
    const second = await call.session.nextAnswer();
    expect(second.text).toBe('Agent heard: And on Sundays? (history: 2)');
    expect(fakes.agent.requests.at(-1)?.history).toEqual([
      { role: 'user', content: 'What are your opening hours?' },
      { role: 'assistant', content: first.text },
    ]);

    const record = await recordOf(svc, call.callSid);
    expect(record?.state).toBe('listening');
    expect(record?.turns.map((t) => [t.caller, t.reply, t.voicedBy])).toEqual([
      ['What are your opening hours?', first.text, 'text'],
      ['And on Sundays?', second.text, 'text'],
    ]);
    expect(record?.turns[0]?.firstAudioMs).toBeGreaterThanOrEqual(0);
  });

  it('stops the agent when the caller interrupts, and keeps only what they heard, in the record and in the next request', async () => {
    const svc = await relayService();
    const long = 'We are open from nine to five on weekdays, from ten to four on Saturdays, and closed on Sundays and public holidays.';
    fakes.agent.setBehaviour({ kind: 'reply', answer: () => long, chunkWords: 2, chunkDelayMs: 150 });
    const call = await dialRelay(svc.address);
    call.session.prompt('When are you open?');
    const heardSoFar = await call.session.answerSoFar(10);
    expect(long.startsWith(heardSoFar)).toBe(true);
    const heard = 'We are open from nine';
    call.session.interrupt(heard, 1800);
    expect((await call.session.nextAnswer()).ending).toBe('interrupted');
    // The agent's connection is closed, its answer unfinished.
    await expect.poll(() => fakes.agent.hungUp(), { timeout: 2_000 }).toBe(1);

    fakes.agent.setBehaviour({ kind: 'reply' });
    call.session.prompt('Sorry, what about Saturdays?');
    const next = await call.session.nextAnswer();
    expect(next.text).toBe('Agent heard: Sorry, what about Saturdays? (history: 2)');
    expect(fakes.agent.requests.at(-1)?.history).toEqual([
      { role: 'user', content: 'When are you open?' },
      { role: 'assistant', content: heard },
    ]);
    const record = await recordOf(svc, call.callSid);
    expect(record?.turns[0]).toMatchObject({ caller: 'When are you open?', reply: heard, interrupted: true });
    expect(record?.turns[0]?.reply).not.toContain('Saturdays');
  });

  it('takes a key press as the caller’s turn, and gives the agent the digit', async () => {
    const svc = await relayService();
    const call = await dialRelay(svc.address);
    call.session.dtmf('5');
    const answer = await call.session.nextAnswer();
    expect(answer.text).toBe('Agent heard: 5 (history: 0)');
    expect(fakes.agent.requests.at(-1)).toMatchObject({ message: '5', digits: '5' });
    const record = await recordOf(svc, call.callSid);
    expect(record?.turns[0]).toMatchObject({ caller: '5', digits: '5' });
  });

  it('ends the session with `end` when the caller says goodbye; the action URL says the closing line and hangs up', async () => {
    const svc = await relayService();
    const call = await dialRelay(svc.address);
    call.session.prompt('Thanks, goodbye!');
    await expect.poll(() => call.session.ends.length, { timeout: 3_000 }).toBe(1);
    expect(JSON.parse(call.session.ends[0]!.handoffData!)).toMatchObject({ reason: 'goodbye' });
    const ended = await sessionEnded(svc.address, call.connect, call.callSid, { SessionStatus: 'completed' });
    expect(ended.status).toBe(200);
    expect(verbsOf(ended.body)).toEqual(['Say', 'Hangup']);
    expect(ended.body).toContain('Thank you for calling. Goodbye!');
    expect(fakes.agent.requests).toEqual([]);
    const hangUp = await twilioPost(svc.address, '/call-status', { CallSid: call.callSid, CallStatus: 'completed', CallDuration: '9' });
    expect(hangUp.status).toBe(200);
    expect(await recordOf(svc, call.callSid)).toMatchObject({ state: 'ended', endReason: 'goodbye', status: 'completed' });
  });

  it('refuses an upgrade with a forged or missing signature before upgrading', async () => {
    const svc = await relayService();
    const url = 'wss://voice.example.test/relay';
    for (const signature of [null, 'Zm9yZ2VkLXNpZ25hdHVyZQ==']) {
      const refused = SimulatedRelaySession.connect({ url, targetUrl: targetOf(svc.address, url), authToken: AUTH_TOKEN, signature });
      await expect(refused).rejects.toBeInstanceOf(RelayUpgradeRefused);
      await expect(refused).rejects.toMatchObject({ status: 403 });
    }
    // Signed with another account's token: refused the same way.
    await expect(SimulatedRelaySession.connect({ url, targetUrl: targetOf(svc.address, url), authToken: 'another-accounts-token-00000000' })).rejects.toMatchObject({ status: 403 });
    expect(svc.service.store.kind).toBe('sqlite');
  });

  it('ignores malformed and unknown messages, logs a malformed one once, and the call goes on', async () => {
    const svc = await relayService();
    const call = await dialRelay(svc.address);
    call.session.raw('not json at all');
    call.session.raw(JSON.stringify({ type: 'prompt', voicePrompt: 42, last: true }));
    call.session.raw(Buffer.from([0, 1, 2, 3]), { binary: true });
    call.session.raw(JSON.stringify({ type: 'somethingNew', payload: {} }));
    call.session.raw(JSON.stringify({ type: 'interrupt', utteranceUntilInterrupt: 7 }));
    call.session.prompt('Are you still there?');
    const answer = await call.session.nextAnswer();
    expect(answer.text).toBe('Agent heard: Are you still there? (history: 0)');
    expect(svc.logs.filter((l) => String(l.message).startsWith('ignored a malformed ConversationRelay message'))).toHaveLength(1);
    expect(svc.logs.filter((l) => l.level === 50)).toEqual([]);
  });

  it('resumes the call with its history when the socket drops mid-answer: the action URL connects a new session', async () => {
    const svc = await relayService();
    const call = await dialRelay(svc.address);
    call.session.prompt('My order number is 4 2 7.');
    const first = await call.session.nextAnswer();

    fakes.agent.setBehaviour({ kind: 'reply', answer: () => 'Let me look that up for you, it will take a moment to find.', chunkDelayMs: 200 });
    call.session.prompt('Where is it?');
    await call.session.answerSoFar(3);
    await call.session.hangUp();

    const ended = await sessionEnded(svc.address, call.connect, call.callSid, { SessionStatus: 'failed', ErrorCode: '64105' });
    expect(ended.status).toBe(200);
    const resumed = await openSession(svc.address, ended.body, { callSid: call.callSid, from: '+15550100001', to: '+15550100002' });
    expect(resumed.connect.attributes.welcomeGreeting).toBe(PHRASES.resumed);

    fakes.agent.setBehaviour({ kind: 'reply' });
    resumed.session.prompt('Where is my order?');
    const answer = await resumed.session.nextAnswer();
    expect(answer.text).toBe('Agent heard: Where is my order? (history: 2)');
    expect(fakes.agent.requests.at(-1)?.history).toEqual([
      { role: 'user', content: 'My order number is 4 2 7.' },
      { role: 'assistant', content: first.text },
    ]);
    const record = await recordOf(svc, call.callSid);
    expect(record?.turns[1]).toMatchObject({ caller: 'Where is it?', cut: 'the line to the caller dropped during the answer' });
  });

  it('answers the action URL of an unknown call with the machine’s line, and closes a socket whose setup names one', async () => {
    const svc = await relayService();
    const unknown = 'CA' + 'f'.repeat(32);
    const ended = await twilioPost(svc.address, '/relay-ended', { CallSid: unknown, CallStatus: 'in-progress' });
    expect(ended.status).toBe(200);
    expect(ended.body).toContain(PHRASES.callLost);
    const url = 'wss://voice.example.test/relay';
    const session = await SimulatedRelaySession.connect({ url, targetUrl: targetOf(svc.address, url), authToken: AUTH_TOKEN, callSid: unknown });
    expect((await session.closed).code).toBe(1008);
    expect(WebSocket.OPEN).toBe(1);
  });
});
