/**
 * A simulated Twilio ConversationRelay: the `<ConversationRelay>` side of a
 * call, beside twilio-caller.ts for `<Gather>`. It opens a real WebSocket to the
 * service, signing the upgrade request with twilio's own signing function over
 * the public URL and no parameters, as ConversationRelay does; sends `setup` at
 * once, then the caller's `prompt`s, `interrupt`s and `dtmf`; and reads every
 * message the service sends the way Twilio does: `text` tokens gathered into
 * answers (until `last: true`), `end` ending the session. A message Twilio would
 * refuse is answered with an `error` message and dropped, and ten in a row close
 * the socket with 1007, as Twilio documents.
 *
 * SimulatedRelaySession is the socket alone (tests of the transport drive it
 * directly). RelayConnection is what SimulatedCall (twilio-caller.ts) delegates
 * to when a TwiML document says `<Connect action><ConversationRelay>`: one
 * session, the caller's turns over it, and how it ended, for the request Twilio
 * then makes to the `<Connect action>` URL.
 *
 * Uses `ws`, a devDependency: src/phone serves the tests, the benchmark and the
 * terminal phone (`npm run call`), never the service.
 *
 * @see https://www.twilio.com/docs/voice/conversationrelay/websocket-messages
 * @see https://www.twilio.com/docs/voice/conversationrelay/onboarding#websocket-security-with-signature-validation
 * @see https://www.twilio.com/docs/usage/webhooks/webhooks-security
 */
import { randomBytes } from 'node:crypto';
import { getExpectedTwilioSignature } from 'twilio/lib/webhooks/webhooks.js';
import WebSocket from 'ws';
import { parseServiceMessage, RelayMessageError, type EndMessage, type ServiceMessage } from '../transports/relay/messages.ts';
import { newCallSid, parseTwiml, TwilioProtocolError, type XmlNode } from './twilio-protocol.ts';

export interface RelayCallerOptions {
  /** The `<ConversationRelay url>` from the TwiML: the public URL Twilio signs. */
  url: string;
  /** Where the socket actually goes, when different (e.g. a local port behind a tunnel URL). */
  targetUrl?: string;
  authToken: string;
  callSid?: string;
  from?: string;
  to?: string;
  /** The TwiML's `<Parameter>`s, sent in `setup`. */
  customParameters?: Record<string, string>;
  /** `lang` of the caller's prompts (default `en-US`). */
  lang?: string;
  /** Replaces the `X-Twilio-Signature` header (a forgery), or leaves it out (`null`): for tests of the refusal. */
  signature?: string | null;
  /** Called for every message the service sends that Twilio accepts, as it arrives. */
  onMessage?: (message: ServiceMessage) => void;
  /** Called for every answer once it has ended (said to its `last` token, interrupted, or cut off by the socket closing). */
  onAnswer?: (answer: RelayAnswer) => void;
}

/** The service's words for one turn, as Twilio would speak them. */
export interface RelayAnswer {
  tokens: string[];
  /** The tokens joined, as spoken. */
  text: string;
  /** `last`: a `text` with `last: true`; `interrupted`: the caller spoke over it; `closed`: the socket went first. */
  ending: 'last' | 'interrupted' | 'closed';
  /** ms from the caller's last final prompt (or key press) to the first token, and to the last. */
  firstTokenMs: number;
  lastTokenMs: number;
}

export interface RelayClose {
  code: number;
  reason: string;
  /** Who closed it: Twilio (an `end`, a hang-up, too many malformed messages) or the service. */
  by: 'twilio' | 'service';
}

/** The handoff a `<Connect><ConversationRelay>` TwiML asks for. */
export interface RelayConnect {
  url: string;
  action: string;
  /** Every attribute of `<ConversationRelay>`, as written. */
  attributes: Record<string, string>;
  parameters: Record<string, string>;
}

/** The service refused the upgrade: `status` is its HTTP answer (403 for a bad signature). */
export class RelayUpgradeRefused extends TwilioProtocolError {
  readonly status: number;

  constructor(status: number) {
    super(`the WebSocket upgrade was answered ${status}`);
    this.status = status;
  }
}

/** "If … the last 10 messages remain unidentified, we will terminate the connection" (1007). */
const MAX_CONSECUTIVE_MALFORMED = 10;
const MALFORMED_CLOSE = { code: 1007, reason: 'Too many consecutive malformed messages.' } as const;
/** Twilio's `error.description` quotes the refused message; keep the quote short. */
const MAX_QUOTED_CHARS = 200;

export class SimulatedRelaySession {
  readonly callSid: string;
  readonly sessionId = `VX${randomBytes(16).toString('hex')}`;
  /** Every message the service sent that Twilio accepts, in order. */
  readonly received: ServiceMessage[] = [];
  /** Why each refused message was refused (Twilio's error 64107), in order. */
  readonly rejected: string[] = [];
  readonly ends: EndMessage[] = [];
  /** Settles once the socket is closed, by either side. */
  readonly closed: Promise<RelayClose>;
  readonly #socket: WebSocket;
  readonly #options: RelayCallerOptions;
  readonly #answers: RelayAnswer[] = [];
  readonly #waiters = new Set<() => void>();
  /** The answer arriving: its tokens, when the first came, and when the caller had asked. */
  #current: { tokens: string[]; firstAt: number; askedAt: number } | undefined;
  #askedAt = performance.now();
  #malformedInARow = 0;
  #closing = false;
  #close: RelayClose | undefined;

  private constructor(socket: WebSocket, options: RelayCallerOptions, callSid: string) {
    this.#socket = socket;
    this.#options = options;
    this.callSid = callSid;
    this.closed = new Promise((resolve) => {
      socket.on('close', (code, reason) => {
        this.#finishAnswer('closed');
        this.#close = { code, reason: reason.toString('utf8'), by: this.#closing ? 'twilio' : 'service' };
        resolve(this.#close);
        this.#wake();
      });
    });
    socket.on('message', (data, isBinary) => this.#receive(data as Buffer, isBinary));
  }

  /** Twilio connects the call to the service: the signed upgrade, then `setup`. */
  static connect(options: RelayCallerOptions): Promise<SimulatedRelaySession> {
    const callSid = options.callSid ?? newCallSid();
    const signature = options.signature === undefined ? getExpectedTwilioSignature(options.authToken, options.url, {}) : options.signature;
    const socket = new WebSocket(options.targetUrl ?? options.url, { headers: signature === null ? {} : { 'x-twilio-signature': signature } });
    return new Promise((resolve, reject) => {
      socket.once('unexpected-response', (_request, response) => {
        response.resume();
        reject(new RelayUpgradeRefused(response.statusCode ?? 0));
        socket.terminate();
      });
      // Settles nothing once open; kept so a late error (after terminate, say) is never unhandled.
      socket.on('error', (error) => reject(new TwilioProtocolError(`the WebSocket failed: ${error.message}`)));
      socket.once('open', () => {
        const session = new SimulatedRelaySession(socket, options, callSid);
        session.#send({
          type: 'setup',
          sessionId: session.sessionId,
          accountSid: 'AC00000000000000000000000000000000',
          parentCallSid: '',
          callSid,
          from: options.from ?? '+15550100001',
          to: options.to ?? '+15550100002',
          forwardedFrom: '',
          callType: 'PSTN',
          callerName: '',
          direction: 'inbound',
          callStatus: 'RINGING',
          customParameters: options.customParameters ?? {},
        });
        resolve(session);
      });
    });
  }

  /** The caller says something; `last: false` is a partial transcript. */
  prompt(text: string, { last = true }: { last?: boolean } = {}): void {
    if (last) this.#askedAt = performance.now();
    this.#send({ type: 'prompt', voicePrompt: text, lang: this.#options.lang ?? 'en-US', last });
  }

  /**
   * The caller speaks over the answer after hearing `heardText` of it, `durationMs`
   * into it; that answer ends here. By default: every token that has arrived, and
   * the time since the first of them.
   */
  interrupt(heardText?: string, durationMs?: number): void {
    const current = this.#current;
    const heard = heardText ?? current?.tokens.join('') ?? '';
    const duration = durationMs ?? (current ? Math.round(performance.now() - current.firstAt) : 0);
    this.#finishAnswer('interrupted');
    this.#send({ type: 'interrupt', utteranceUntilInterrupt: heard, durationUntilInterruptMs: duration });
  }

  /** What has arrived of the answer being spoken now, or undefined when none is. */
  get speaking(): string | undefined {
    return this.#current?.tokens.join('');
  }

  /** The caller presses a key. */
  dtmf(digit: string): void {
    this.#askedAt = performance.now();
    this.#send({ type: 'dtmf', digit });
  }

  /** Sends a frame as given, for tests of what the service does with a malformed one. */
  raw(frame: string | Buffer, { binary = false }: { binary?: boolean } = {}): void {
    this.#socket.send(frame, { binary });
  }

  /** The next whole answer (in order); rejects if the socket closes with none left. */
  async nextAnswer(): Promise<RelayAnswer> {
    await this.#until(() => this.#answers.length > 0, 'the socket closed before the service answered');
    return this.#answers.shift()!;
  }

  /** The answer being spoken, once at least `minChars` of it have arrived: what a caller could have heard. */
  async answerSoFar(minChars: number): Promise<string> {
    const soFar = () => this.#current?.tokens.join('') ?? '';
    await this.#until(() => soFar().length >= minChars, `the answer ended or the socket closed before ${minChars} characters of it arrived`);
    return soFar();
  }

  /** The caller hangs up: Twilio closes the socket. */
  hangUp(): Promise<RelayClose> {
    this.#closeAs(1000, 'call ended');
    return this.closed;
  }

  #receive(data: Buffer, isBinary: boolean): void {
    if (this.#closing) return;
    let message: ServiceMessage;
    try {
      message = parseServiceMessage(data, isBinary);
    } catch (error) {
      if (!(error instanceof RelayMessageError)) throw error;
      this.#refuse(error.message, isBinary ? '<binary frame>' : data.toString('utf8'));
      return;
    }
    this.#malformedInARow = 0;
    this.received.push(message);
    this.#options.onMessage?.(message);
    if (message.type === 'text') {
      this.#current ??= { tokens: [], firstAt: performance.now(), askedAt: this.#askedAt };
      this.#current.tokens.push(message.token);
      if (message.last) this.#finishAnswer('last');
    } else if (message.type === 'end') {
      this.ends.push(message);
      // "End the session and return control of the call to Twilio": the socket goes, the action URL follows.
      this.#closeAs(1000, 'session ended');
    }
    this.#wake();
  }

  /** "A failed validation check does not end the session but the message will not be processed." */
  #refuse(why: string, frame: string): void {
    this.rejected.push(why);
    this.#send({ type: 'error', description: `Invalid message received: ${frame.slice(0, MAX_QUOTED_CHARS)}` });
    this.#malformedInARow += 1;
    if (this.#malformedInARow >= MAX_CONSECUTIVE_MALFORMED) this.#closeAs(MALFORMED_CLOSE.code, MALFORMED_CLOSE.reason);
  }

  #finishAnswer(ending: RelayAnswer['ending']): void {
    const current = this.#current;
    if (!current) return;
    this.#current = undefined;
    const answer: RelayAnswer = {
      tokens: current.tokens,
      text: current.tokens.join(''),
      ending,
      firstTokenMs: current.firstAt - current.askedAt,
      lastTokenMs: performance.now() - current.askedAt,
    };
    this.#answers.push(answer);
    this.#options.onAnswer?.(answer);
  }

  #send(message: Record<string, unknown>): void {
    if (this.#closing || this.#close) throw new TwilioProtocolError('the session has ended');
    this.#socket.send(JSON.stringify(message));
  }

  #closeAs(code: number, reason: string): void {
    if (this.#closing) return;
    this.#closing = true;
    this.#socket.close(code, reason);
  }

  #until(ready: () => boolean, otherwise: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!ready() && !this.#close) return;
        this.#waiters.delete(check);
        if (ready()) resolve();
        else reject(new TwilioProtocolError(otherwise));
      };
      this.#waiters.add(check);
      check();
    });
  }

  #wake(): void {
    for (const check of [...this.#waiters]) check();
  }
}

/** What a turn over the socket came to: the next answer was said, the session ended, or the caller hung up. */
export type RelayExchange = 'answered' | 'ended' | 'hung-up';

export interface RelayConnectionOptions {
  connect: RelayConnect;
  /** Where the socket actually goes, when not `connect.url` (a loopback port behind the public name). */
  targetUrl?: string;
  authToken: string;
  callSid: string;
  from: string;
  to: string;
  onMessage?: (message: ServiceMessage) => void;
  /** Every answer, once ConversationRelay has said it (or stopped saying it). */
  onAnswer(answer: RelayAnswer): void;
  /**
   * The session ended other than by the caller hanging up: Twilio requests the
   * `<Connect action>` URL now, with these parameters beside the call's own.
   */
  onEnd(params: Record<string, string>): void;
}

/**
 * Twilio's ConversationRelay errors, reported as `ErrorCode` to the action URL.
 * @see https://www.twilio.com/docs/api/errors/64105 "Websocket ended": the server side disconnected during the call.
 * @see https://www.twilio.com/docs/api/errors/64107 "Invalid Message Received".
 */
const SOCKET_ENDED = '64105';
const INVALID_MESSAGES = '64107';

/**
 * A call that a `<Connect action><ConversationRelay>` handed to the service's
 * socket: the caller's turns go over it (a final `prompt` for words, an empty one
 * for silence, `dtmf` for keys, `interrupt` to speak over an answer), each turn
 * lasting until the next answer has been said. When the session ends, the
 * request Twilio makes to the `<Connect action>` URL says how: `SessionStatus`
 * `completed` after the service's `end` (with its `HandoffData`), `failed` when
 * the socket closed without one (with the error Twilio would report), and
 * `SessionDuration` in seconds.
 *
 * @see https://www.twilio.com/docs/voice/twiml/connect/conversationrelay
 * @see https://www.twilio.com/docs/voice/twiml/connect
 */
export class RelayConnection {
  readonly connect: RelayConnect;
  readonly #options: RelayConnectionOptions;
  readonly #openedAt = Date.now();
  #session!: SimulatedRelaySession;
  #waiter: ((exchange: RelayExchange) => void) | undefined;
  #hungUp = false;

  private constructor(options: RelayConnectionOptions) {
    this.connect = options.connect;
    this.#options = options;
  }

  /** Twilio opens the session the `<ConversationRelay>` names: the signed upgrade, then `setup` with its `<Parameter>`s. */
  static async open(options: RelayConnectionOptions): Promise<RelayConnection> {
    const connection = new RelayConnection(options);
    const { connect } = options;
    const session = await SimulatedRelaySession.connect({
      url: connect.url,
      ...(options.targetUrl ? { targetUrl: options.targetUrl } : {}),
      authToken: options.authToken,
      callSid: options.callSid,
      from: options.from,
      to: options.to,
      customParameters: connect.parameters,
      ...(connect.attributes.language ? { lang: connect.attributes.language } : {}),
      ...(options.onMessage ? { onMessage: options.onMessage } : {}),
      onAnswer: (answer) => connection.#answered(answer),
    });
    connection.#session = session;
    void session.closed.then((close) => connection.#closed(close));
    return connection;
  }

  get session(): SimulatedRelaySession {
    return this.#session;
  }

  /** Spoken by Twilio as soon as the session starts. */
  get welcomeGreeting(): string | undefined {
    return this.connect.attributes.welcomeGreeting;
  }

  /** What the caller has heard so far of the answer being spoken, or undefined when none is. */
  get speaking(): string | undefined {
    return this.#session.speaking;
  }

  /** The caller says `text` (`null`: stays silent, an empty final prompt). */
  say(text: string | null): Promise<RelayExchange> {
    return this.#exchange(() => this.#session.prompt(text ?? ''));
  }

  /** The caller presses keys: one `dtmf` message each, as Twilio sends them (only with `dtmfDetection`). */
  press(digits: string): Promise<RelayExchange> {
    if (this.connect.attributes.dtmfDetection !== 'true') throw new TwilioProtocolError('<ConversationRelay> without dtmfDetection="true": Twilio reports no key presses');
    return this.#exchange(() => {
      for (const digit of digits) this.#session.dtmf(digit);
    });
  }

  /**
   * The caller speaks over the answer being said: `interrupt` with what they heard
   * of it (the turn waiting on that answer ends here), then their words.
   */
  interrupt(words: string): Promise<RelayExchange> {
    // `interruptible` says what may cut the speech short; speech does with `any` (the default) and `speech`.
    const interruptible = this.connect.attributes.interruptible ?? 'any';
    if (interruptible !== 'any' && interruptible !== 'speech') throw new TwilioProtocolError(`<ConversationRelay interruptible="${interruptible}">: speech does not interrupt`);
    if (this.#session.speaking === undefined) throw new TwilioProtocolError('nothing is being said to interrupt');
    this.#session.interrupt();
    return this.say(words);
  }

  /** The caller hangs up: Twilio closes the socket and requests no action URL. */
  async hangUp(): Promise<void> {
    this.#hungUp = true;
    await this.#session.hangUp();
  }

  #exchange(send: () => void): Promise<RelayExchange> {
    if (this.#waiter) throw new TwilioProtocolError('the service has not answered the last turn yet');
    return new Promise((resolve) => {
      this.#waiter = resolve;
      try {
        send();
      } catch (error) {
        this.#waiter = undefined;
        throw error;
      }
    });
  }

  #answered(answer: RelayAnswer): void {
    this.#options.onAnswer(answer);
    // An answer cut off by the socket closing is followed by the session's end.
    if (answer.ending !== 'closed') this.#settle('answered');
  }

  #closed(close: RelayClose): void {
    if (this.#hungUp) return this.#settle('hung-up');
    this.#options.onEnd(this.#actionParams(close));
    this.#settle('ended');
  }

  /** `SessionStatus` `completed` after the service's `end`, `failed` when the socket closed without one. */
  #actionParams(close: RelayClose): Record<string, string> {
    const params: Record<string, string> = {
      SessionId: this.#session.sessionId,
      SessionDuration: String(Math.round((Date.now() - this.#openedAt) / 1000)),
    };
    const ended = this.#session.ends.at(-1);
    if (ended) {
      if (ended.handoffData !== undefined) params.HandoffData = ended.handoffData;
      return { ...params, SessionStatus: 'completed' };
    }
    return { ...params, SessionStatus: 'failed', ErrorCode: close.by === 'service' ? SOCKET_ENDED : INVALID_MESSAGES };
  }

  #settle(exchange: RelayExchange): void {
    const waiter = this.#waiter;
    this.#waiter = undefined;
    waiter?.(exchange);
  }
}

/** The `<Connect><ConversationRelay>` of a TwiML document that holds nothing else, read as Twilio reads it. */
export function readRelayConnect(twiml: string): RelayConnect {
  const verbs = parseTwiml(twiml).filter((node) => !('#text' in node));
  const connect = verbs[0];
  if (verbs.length !== 1 || !connect || !('Connect' in connect)) throw new TwilioProtocolError('expected one <Connect> and nothing else');
  return relayConnectOf(connect);
}

/** A `<Connect>` verb of a TwiML document, which must hand the call to ConversationRelay. */
export function relayConnectOf(connect: XmlNode): RelayConnect {
  const nouns = (connect.Connect as XmlNode[]).filter((node) => !('#text' in node));
  const relay = nouns[0];
  if (nouns.length !== 1 || !relay || !('ConversationRelay' in relay)) throw new TwilioProtocolError('<Connect> must hold one <ConversationRelay>');
  const action = connect[':@']?.action;
  const attributes = relay[':@'] ?? {};
  if (!action) throw new TwilioProtocolError('<Connect> without an action');
  if (!attributes.url) throw new TwilioProtocolError('<ConversationRelay> without a url');
  const parameters = (relay.ConversationRelay as XmlNode[])
    .filter((node) => !('#text' in node))
    .map((child): [string, string] => {
      const { name, value } = child[':@'] ?? {};
      if (!('Parameter' in child) || name === undefined || value === undefined) throw new TwilioProtocolError('<ConversationRelay> may hold only <Parameter name value>');
      return [name, value];
    });
  return { url: attributes.url, action, attributes, parameters: Object.fromEntries(parameters) };
}
