/**
 * The simulated ConversationRelay against a tiny loopback service (Fastify +
 * @fastify/websocket) that checks the upgrade with verifyRelayUpgrade before
 * upgrading, reads every frame with parseTwilioMessage and answers with
 * serialiseServiceMessage: echoing the caller's words token by token, and a few
 * scripted behaviours named by the caller's words.
 */
import { once } from 'node:events';
import websocket from '@fastify/websocket';
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify';
import { getExpectedTwilioSignature, validateRequest } from 'twilio/lib/webhooks/webhooks.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RawData, WebSocket } from 'ws';
import { RelayUpgradeRefused, SimulatedRelaySession, type RelayCallerOptions } from '../../src/phone/relay-caller.ts';
import { TwilioProtocolError } from '../../src/phone/twilio-caller.ts';
import { parseTwilioMessage, RelayMessageError, serialiseServiceMessage, type ServiceMessage, type TwilioMessage } from '../../src/transports/relay/messages.ts';
import { verifyRelayUpgrade } from '../../src/transports/relay/upgrade-signature.ts';

const TOKEN = 'relay-test-token';
const PUBLIC_BASE = 'wss://voice.example.com';

interface ServiceSide {
  /** What the service read from each frame: a message, or why it refused it. */
  frames: Array<TwilioMessage | RelayMessageError>;
  signature: string | undefined;
  closed: Promise<{ code: number; reason: string }>;
  /** Resolves once `count` frames have arrived. */
  framesReceived(count: number): Promise<Array<TwilioMessage | RelayMessageError>>;
}

let app: FastifyInstance;
let target: string;
const sessions: ServiceSide[] = [];
let upgradesRefused = 0;

function answer(socket: WebSocket, message: ServiceMessage) {
  socket.send(serialiseServiceMessage(message));
}

function respond(socket: WebSocket, message: TwilioMessage) {
  if (message.type === 'dtmf') answer(socket, { type: 'text', token: `You pressed ${message.digit}`, last: true });
  if (message.type !== 'prompt' || !message.last) return;
  switch (message.voicePrompt) {
    case 'goodbye':
      answer(socket, { type: 'text', token: 'Goodbye!', last: true });
      answer(socket, { type: 'end', handoffData: '{"reasonCode":"goodbye"}' });
      return;
    case 'tell me a story':
      // The first words of a long answer; the rest never comes unless asked: the caller interrupts.
      for (const token of ['Once', ' upon', ' a', ' time']) answer(socket, { type: 'text', token, last: false });
      return;
    case 'garbage':
      for (let i = 0; i < 10; i++) socket.send(`{"type":"text","token":null,"n":${i}}`);
      return;
    case 'drop':
      socket.close(1011, 'gone');
      return;
    default: {
      const words = `You said: ${message.voicePrompt}`.split(/(?= )/);
      words.forEach((token, i) => answer(socket, { type: 'text', token, last: i === words.length - 1 }));
    }
  }
}

beforeAll(async () => {
  app = Fastify();
  await app.register(websocket);
  app.addHook('preValidation', async (request, reply) => {
    if (!verifyRelayUpgrade(TOKEN, PUBLIC_BASE + request.url, request.headers)) {
      upgradesRefused += 1;
      return reply.code(403).send('Forbidden');
    }
  });
  app.get('/relay', { websocket: true }, (socket: WebSocket, request: FastifyRequest) => {
    const frames: ServiceSide['frames'] = [];
    const header = request.headers['x-twilio-signature'];
    const side: ServiceSide = {
      frames,
      signature: typeof header === 'string' ? header : undefined,
      closed: once(socket, 'close').then(([code, reason]) => ({ code: code as number, reason: String(reason) })),
      async framesReceived(count) {
        while (frames.length < count) await once(socket, 'frame-read');
        return frames;
      },
    };
    sessions.push(side);
    socket.on('message', (data: RawData, isBinary: boolean) => {
      try {
        const message = parseTwilioMessage(data as Buffer, isBinary);
        frames.push(message);
        respond(socket, message);
      } catch (error) {
        frames.push(error as RelayMessageError);
      }
      socket.emit('frame-read');
    });
  });
  const address = await app.listen({ port: 0, host: '127.0.0.1' });
  target = address.replace(/^http/, 'ws');
});

afterAll(() => app.close());

async function dial(options: Partial<RelayCallerOptions> = {}): Promise<{ call: SimulatedRelaySession; service: ServiceSide }> {
  const before = sessions.length;
  const call = await SimulatedRelaySession.connect({ url: `${PUBLIC_BASE}/relay`, targetUrl: `${target}/relay`, authToken: TOKEN, ...options });
  const service = sessions[before]!;
  await service.framesReceived(1);
  return { call, service };
}

describe('the simulated ConversationRelay', () => {
  it("signs the upgrade over the public URL so that the service's validateRequest accepts it", async () => {
    const { call, service } = await dial({ url: `${PUBLIC_BASE}/relay?resume=1`, targetUrl: `${target}/relay?resume=1` });
    expect(service.signature).toBe(getExpectedTwilioSignature(TOKEN, `${PUBLIC_BASE}/relay?resume=1`, {}));
    expect(validateRequest(TOKEN, service.signature!, `${PUBLIC_BASE}/relay?resume=1`, {})).toBe(true);
    await call.hangUp();
  });

  it('is refused at the upgrade with a forged or missing signature, or one for another token or URL', async () => {
    const refusedBefore = upgradesRefused;
    const sessionsBefore = sessions.length;
    const attempts: Array<Partial<RelayCallerOptions>> = [
      { signature: 'forged' },
      { signature: null },
      { authToken: 'another-token' },
      { url: `${PUBLIC_BASE}/elsewhere` },
    ];
    for (const attempt of attempts) {
      const refusal = await dial(attempt).then(() => undefined, (error: unknown) => error);
      expect(refusal).toBeInstanceOf(RelayUpgradeRefused);
      expect((refusal as RelayUpgradeRefused).status).toBe(403);
    }
    expect(upgradesRefused - refusedBefore).toBe(attempts.length);
    expect(sessions.length).toBe(sessionsBefore);
  });

  it("sends setup first, in Twilio's format, with the call and its parameters", async () => {
    const { call, service } = await dial({ from: '+15557770001', to: '+15557770002', customParameters: { resumed: '1' } });
    expect(service.frames[0]).toStrictEqual({
      type: 'setup',
      sessionId: call.sessionId,
      callSid: call.callSid,
      from: '+15557770001',
      to: '+15557770002',
      direction: 'inbound',
      customParameters: { resumed: '1' },
    });
    await call.hangUp();
  });

  it('gathers the text tokens of an answer until last:true, showing each as it arrives', async () => {
    const shown: ServiceMessage[] = [];
    const { call, service } = await dial({ onMessage: (message) => shown.push(message) });
    call.prompt('hello there');
    const reply = await call.nextAnswer();
    expect(reply).toMatchObject({ tokens: ['You', ' said:', ' hello', ' there'], text: 'You said: hello there', ending: 'last' });
    expect(shown.map((message) => message.type === 'text' && message.token)).toEqual(reply.tokens);
    expect(reply.lastTokenMs).toBeGreaterThanOrEqual(reply.firstTokenMs);
    expect(service.frames[1]).toStrictEqual({ type: 'prompt', voicePrompt: 'hello there', lang: 'en-US', last: true });
    call.prompt('and again');
    expect((await call.nextAnswer()).text).toBe('You said: and again');
    await call.hangUp();
  });

  it('ends an answer where the caller speaks over it, and tells the service what was heard', async () => {
    const { call, service } = await dial();
    call.prompt('tell me a story');
    const heard = await call.answerSoFar('Once upon'.length);
    call.interrupt(heard, 640);
    expect(await call.nextAnswer()).toMatchObject({ text: heard, ending: 'interrupted' });
    const frames = await service.framesReceived(3);
    expect(frames[2]).toStrictEqual({ type: 'interrupt', utteranceUntilInterrupt: heard, durationUntilInterruptMs: 640 });
    await call.hangUp();
  });

  it('sends key presses as dtmf', async () => {
    const { call, service } = await dial();
    call.dtmf('5');
    expect((await call.nextAnswer()).text).toBe('You pressed 5');
    expect(service.frames[1]).toStrictEqual({ type: 'dtmf', digit: '5' });
    await call.hangUp();
  });

  it("ends the session on the service's end, closing the socket and keeping the handoff data", async () => {
    const { call, service } = await dial();
    call.prompt('goodbye');
    expect((await call.nextAnswer()).text).toBe('Goodbye!');
    expect(await call.closed).toStrictEqual({ code: 1000, reason: 'session ended', by: 'twilio' });
    expect(call.ends).toStrictEqual([{ type: 'end', handoffData: '{"reasonCode":"goodbye"}' }]);
    expect((await service.closed).code).toBe(1000);
    expect(() => call.prompt('hello?')).toThrow(TwilioProtocolError);
  });

  it('answers each message Twilio would refuse with an error, and closes with 1007 after ten in a row', async () => {
    const { call, service } = await dial();
    call.prompt('garbage');
    expect(await call.closed).toStrictEqual({ code: 1007, reason: 'Too many consecutive malformed messages.', by: 'twilio' });
    expect(call.rejected).toHaveLength(10);
    expect(call.received).toStrictEqual([]);
    const frames = await service.framesReceived(12);
    expect(frames.slice(2)).toHaveLength(10);
    for (const frame of frames.slice(2)) {
      expect(frame).toMatchObject({ type: 'error', description: expect.stringMatching(/^Invalid message received: \{"type":"text","token":null/) });
    }
  });

  it('sees the service drop the socket, with no answer to wait for', async () => {
    const { call } = await dial();
    call.prompt('drop');
    await expect(call.nextAnswer()).rejects.toThrow(TwilioProtocolError);
    expect(await call.closed).toStrictEqual({ code: 1011, reason: 'gone', by: 'service' });
  });

  it('sends raw frames as they are, text or binary, for tests of malformed input', async () => {
    const { call, service } = await dial();
    call.raw('not json');
    call.raw(Buffer.from('{"type":"dtmf","digit":"1"}'), { binary: true });
    call.raw('{"type":"somethingNew"}');
    const frames = await service.framesReceived(4);
    expect(frames[1]).toBeInstanceOf(RelayMessageError);
    expect(frames[2]).toBeInstanceOf(RelayMessageError);
    expect(frames[3]).toStrictEqual({ type: 'ignored', messageType: 'somethingNew' });
    await call.hangUp();
  });

  it('hangs up by closing the socket', async () => {
    const { call, service } = await dial();
    expect(await call.hangUp()).toStrictEqual({ code: 1000, reason: 'call ended', by: 'twilio' });
    expect(await service.closed).toStrictEqual({ code: 1000, reason: 'call ended' });
  });
});
