/**
 * A simulated Twilio: it places a call against the service the way Twilio's voice
 * platform does. It signs every webhook with twilio's own signing function, walks
 * the TwiML it gets back verb by verb (`<Say>`, `<Play>` fetched and checked,
 * `<Pause>`, `<Gather>` whose action gets the caller's words or keys,
 * `<Redirect>`, `<Hangup/>`, and `<Connect action><ConversationRelay>`), and
 * sends the status callback when the call ends.
 *
 * On `<Connect><ConversationRelay>` it does what Twilio does (relay-caller.ts,
 * RelayConnection): opens the session over the public `wss://` URL with a signed
 * upgrade, speaks the `welcomeGreeting`, and from then on the caller's turns go
 * over the socket. When the session ends, it requests the `<Connect action>` URL
 * and goes on with the TwiML it gets (a goodbye and `<Hangup/>`, or another
 * `<Connect>` resuming the call).
 *
 * Used by the terminal phone (`npm run call`), the end-to-end tests and the
 * benchmark, so all three exercise the same contract Twilio does.
 *
 * @see https://www.twilio.com/docs/voice/twiml
 * @see https://www.twilio.com/docs/voice/twiml/connect/conversationrelay
 * @see https://www.twilio.com/docs/usage/webhooks/webhooks-security
 */
import { randomUUID } from 'node:crypto';
import { getExpectedTwilioSignature } from 'twilio/lib/webhooks/webhooks.js';
import type { ServiceMessage } from '../transports/relay/messages.ts';
import { RelayConnection, relayConnectOf, type RelayAnswer, type RelayExchange, type SimulatedRelaySession } from './relay-caller.ts';
import { newCallSid, parseTwiml, TwilioProtocolError, type XmlNode } from './twilio-protocol.ts';

export { newCallSid, parseTwiml, TwilioProtocolError };

export type Heard =
  | { verb: 'Say'; text: string }
  | { verb: 'Play'; url: string; contentType: string; bytes: number; fetchMs: number }
  | { verb: 'Pause'; seconds: number }
  | { verb: 'Hangup' }
  /** ConversationRelay speaking: its `welcomeGreeting`, or one answer of the service's `text` tokens, and how it ended. */
  | { verb: 'ConversationRelay'; text: string; from: 'welcomeGreeting' | 'text'; ending: RelayAnswer['ending'] };

export interface CallerOptions {
  /** The PUBLIC_BASE_URL the service signs against. */
  publicBaseUrl: string;
  /** Where requests actually go, when different (e.g. a local port behind a tunnel URL). */
  targetBaseUrl?: string;
  authToken: string;
  callSid?: string;
  from?: string;
  to?: string;
  fetch?: typeof globalThis.fetch;
  /** Sleep through `<Pause>` like a real call (default: record it and go on). */
  realPauses?: boolean;
  /**
   * How long the caller spends hearing a verb before Twilio moves on to the next
   * one, in ms (default: none, go straight on). A benchmark plays audio in real
   * time with it, so a `<Redirect>` after a `<Play>` arrives when it would on a
   * real call. Overrides `realPauses` for `<Pause>`.
   */
  playbackMs?: (heard: Heard) => number;
  /** Guard against a service that redirects forever. */
  maxRedirectsPerTurn?: number;
  /** Called for every verb as the caller hears it (a ConversationRelay answer once it has ended). */
  onHear?: (heard: Heard) => void;
  /** Called for every message the service sends over a ConversationRelay session, as it arrives (`text` tokens one by one). */
  onRelayMessage?: (message: ServiceMessage) => void;
}

export interface TurnResult {
  heard: Heard[];
  /** Every TwiML document of this turn, as received. */
  documents: string[];
  /** The call is over (hung up by the service, or the document ended). */
  ended: boolean;
  /** ms from sending the turn's first request to receiving its last TwiML. */
  elapsedMs: number;
}

interface SentRequest {
  url: string;
  params: Record<string, string>;
  token: string;
}

interface Next {
  url: string;
  extra: Record<string, string>;
}

/** The `<Gather>` waiting for the caller: where their words or keys go, and what it listens for. */
interface PendingGather {
  action: string;
  /** `input` (Twilio's default is `dtmf`). */
  input: string[];
  numDigits: number | undefined;
}

const KEYS = /^[0-9*#]+$/;

export class SimulatedCall {
  readonly callSid: string;
  readonly heard: Heard[] = [];
  readonly #options: CallerOptions;
  readonly #fetch: typeof globalThis.fetch;
  readonly #from: string;
  readonly #to: string;
  #pendingGather: PendingGather | undefined;
  /** The ConversationRelay session the call is connected to, if it is. */
  #relay: RelayConnection | undefined;
  /** Twilio's request to a `<Connect action>` URL after its session ended, and all that followed. */
  #afterRelay: Promise<TurnResult> | undefined;
  /** The turn waiting on the relay session: the answers said meanwhile are heard in it. */
  #relayTurn: TurnResult | undefined;
  #ended = false;
  #startedAt = 0;
  #last: SentRequest | undefined;

  constructor(options: CallerOptions) {
    this.#options = options;
    this.#fetch = options.fetch ?? globalThis.fetch;
    this.callSid = options.callSid ?? newCallSid();
    this.#from = options.from ?? '+15550100001';
    this.#to = options.to ?? '+15550100002';
  }

  get ended(): boolean {
    return this.#ended;
  }

  /** The ConversationRelay session the call is on now, if it is on one (for tests of what crossed it). */
  get relaySession(): SimulatedRelaySession | undefined {
    return this.#relay?.session;
  }

  /** What has arrived so far of the answer ConversationRelay is speaking, or undefined when none is. */
  get speaking(): string | undefined {
    return this.#relay?.speaking;
  }

  /** The call connects: Twilio requests `/voice` and plays what it says. */
  dial(): Promise<TurnResult> {
    this.#startedAt = Date.now();
    return this.#follow({ url: `${this.#options.publicBaseUrl}/voice`, extra: { CallStatus: 'ringing' } });
  }

  /**
   * The caller speaks (or stays silent with `null`): at the current `<Gather>`, or
   * over the ConversationRelay session, where the turn lasts until the next answer
   * has been said or the session has ended and Twilio has carried on.
   */
  async say(text: string | null, confidence = 0.92): Promise<TurnResult> {
    const before = await this.#ready();
    if (this.#relay) return this.#overRelay(this.#relay.say(text), before);
    const gather = this.#gathering();
    const extra: Record<string, string> = text === null ? {} : { SpeechResult: text, Confidence: String(confidence) };
    return this.#follow({ url: gather.action, extra }, before);
  }

  /**
   * The caller presses keys (`0`-`9`, `*`, `#`): `dtmf` messages over ConversationRelay,
   * or `Digits` to a `<Gather>` that listens for them (as many as its `numDigits`;
   * Twilio stops listening there and later keys are lost).
   */
  async press(digits: string): Promise<TurnResult> {
    if (!KEYS.test(digits)) throw new TwilioProtocolError(`a phone has no key ${JSON.stringify(digits)}`);
    const before = await this.#ready();
    if (this.#relay) return this.#overRelay(this.#relay.press(digits), before);
    const gather = this.#gathering();
    if (!gather.input.includes('dtmf')) throw new TwilioProtocolError('the <Gather> does not listen for keys');
    return this.#follow({ url: gather.action, extra: { Digits: digits.slice(0, gather.numDigits) } }, before);
  }

  /**
   * The caller speaks over the answer ConversationRelay is saying: `interrupt`
   * with what has arrived of it (the turn waiting on it ends with it), then
   * `words` as a prompt; this turn lasts until the next answer has been said.
   */
  async interrupt(words: string): Promise<TurnResult> {
    if (!this.#relay) throw new TwilioProtocolError('the call is not on a ConversationRelay session');
    return this.#overRelay(this.#relay.interrupt(words));
  }

  /** Twilio did not get an answer and sends the same request again (same idempotency token). */
  async retryLast(): Promise<string> {
    if (!this.#last) throw new TwilioProtocolError('nothing to retry');
    const { status, body } = await this.#post(this.#last);
    if (status !== 200) throw new TwilioProtocolError(`retry answered ${status}: ${body}`);
    return body;
  }

  /** The caller hangs up (or the call ended): the relay socket closes, then Twilio's status callback. */
  async hangUp(status = 'completed'): Promise<number> {
    this.#ended = true;
    const relay = this.#relay;
    this.#relay = undefined;
    await relay?.hangUp();
    const duration = String(Math.round((Date.now() - this.#startedAt) / 1000));
    const request = this.#request(`${this.#options.publicBaseUrl}/call-status`, { CallStatus: status, CallDuration: duration });
    return (await this.#post(request)).status;
  }

  /** Sends one signed webhook for this call and returns the raw answer (for tests of single requests). */
  async webhook(path: string, extra: Record<string, string> = {}): Promise<{ status: number; body: string }> {
    return this.#post(this.#request(`${this.#options.publicBaseUrl}${path}`, extra));
  }

  /** Requests `first` and every request its TwiML leads to, until the call listens again or ends. */
  async #follow(first: Next, before?: TurnResult): Promise<TurnResult> {
    const started = performance.now();
    const result = startTurn(before);
    this.#pendingGather = undefined;
    let next: Next | undefined = first;
    const maxRedirects = this.#options.maxRedirectsPerTurn ?? 60;
    for (let hops = 0; next; hops++) {
      if (hops > maxRedirects) throw new TwilioProtocolError(`more than ${maxRedirects} redirects in one turn`);
      const request = this.#request(next.url, next.extra);
      const { status, body } = await this.#post(request);
      if (status !== 200) throw new TwilioProtocolError(`${new URL(next.url).pathname} answered ${status}: ${body.slice(0, 200)}`);
      result.documents.push(body);
      next = await this.#walk(body, result);
    }
    result.ended = this.#ended;
    result.elapsedMs += performance.now() - started;
    return result;
  }

  /** A turn over the relay session: what was said until it settled, and, if the session ended, what Twilio did next. */
  async #overRelay(exchange: Promise<RelayExchange>, before?: TurnResult): Promise<TurnResult> {
    const started = performance.now();
    const result = startTurn(before);
    this.#relayTurn = result;
    try {
      if ((await exchange) === 'ended') mergeTurn(result, await this.#afterSession());
    } finally {
      if (this.#relayTurn === result) this.#relayTurn = undefined;
    }
    result.ended = this.#ended;
    result.elapsedMs += performance.now() - started;
    return result;
  }

  /** Before the caller's next input: Twilio has finished with any session that ended, and the call goes on. */
  async #ready(): Promise<TurnResult | undefined> {
    const result = await this.#afterSession();
    if (this.#ended) throw new TwilioProtocolError('the call has ended');
    return result;
  }

  /** Waits for Twilio to finish with a session that ended (its action URL and what followed); returns what was heard then. */
  #afterSession(): Promise<TurnResult | undefined> {
    const after = this.#afterRelay;
    this.#afterRelay = undefined;
    return after ?? Promise.resolve(undefined);
  }

  #gathering(): PendingGather {
    if (!this.#pendingGather) throw new TwilioProtocolError('the service is not listening (no <Gather> pending)');
    return this.#pendingGather;
  }

  /** `<Connect><ConversationRelay>`: the session opens (signed upgrade, `setup`) and Twilio speaks the welcome greeting. */
  async #connectRelay(node: XmlNode, result: TurnResult): Promise<void> {
    const connect = relayConnectOf(node);
    const relay = await RelayConnection.open({
      connect,
      ...this.#socketTarget(connect.url),
      authToken: this.#options.authToken,
      callSid: this.callSid,
      from: this.#from,
      to: this.#to,
      ...(this.#options.onRelayMessage ? { onMessage: this.#options.onRelayMessage } : {}),
      onAnswer: (answer) => this.#hear({ verb: 'ConversationRelay', text: answer.text, from: 'text', ending: answer.ending }, this.#relayTurn),
      onEnd: (params) => {
        if (this.#relay !== relay) return;
        this.#relay = undefined;
        // Twilio requests the action URL at once, whether or not the caller is in a turn.
        const after = this.#follow({ url: relay.connect.action, extra: params });
        after.catch(() => undefined); // rethrown to whoever waits on the call next (#ready)
        this.#afterRelay = after;
      },
    });
    this.#relay = relay;
    const greeting = relay.welcomeGreeting;
    if (greeting) await this.#play({ verb: 'ConversationRelay', text: greeting, from: 'welcomeGreeting', ending: 'last' }, result);
  }

  /** Executes one TwiML document; returns the request it leads to, if any. */
  async #walk(twiml: string, result: TurnResult): Promise<Next | undefined> {
    const verbs = parseTwiml(twiml);
    for (const node of verbs) {
      const [name] = Object.keys(node).filter((k) => k !== ':@');
      const attrs = node[':@'] ?? {};
      const children = (node[name!] as XmlNode[]) ?? [];
      switch (name) {
        case 'Say':
        case 'Play':
        case 'Pause':
          await this.#perform(name, attrs, children, result);
          break;
        case 'Gather': {
          const nested: Array<{ name: 'Say' | 'Play' | 'Pause'; attrs: Record<string, string>; children: XmlNode[] }> = [];
          for (const child of children) {
            const [childName] = Object.keys(child).filter((k) => k !== ':@');
            if (childName === 'Say' || childName === 'Play' || childName === 'Pause') {
              nested.push({ name: childName, attrs: child[':@'] ?? {}, children: (child[childName] as XmlNode[]) ?? [] });
            } else if (childName !== '#text') {
              throw new TwilioProtocolError(`<${childName}> is not allowed inside <Gather>`);
            }
          }
          // Twilio fetches every <Play> nested in a <Gather> before it plays the first.
          const fetched = new Map<number, Heard>();
          for (const [index, verb] of nested.entries()) {
            if (verb.name === 'Play') fetched.set(index, await this.#fetchAudio(textOf(verb.children)));
          }
          for (const [index, verb] of nested.entries()) {
            const audio = fetched.get(index);
            if (audio) await this.#play(audio, result);
            else await this.#perform(verb.name, verb.attrs, verb.children, result);
          }
          if (!attrs.action) throw new TwilioProtocolError('<Gather> without an action');
          this.#pendingGather = {
            action: this.#absolute(attrs.action),
            input: (attrs.input ?? 'dtmf').split(/\s+/),
            numDigits: attrs.numDigits === undefined ? undefined : Number(attrs.numDigits),
          };
          return undefined;
        }
        case 'Connect':
          // With an action, the verbs after <Connect> never run: the action URL's TwiML continues the call.
          await this.#connectRelay(node, result);
          return undefined;
        case 'Redirect':
          return { url: this.#absolute(textOf(children)), extra: {} };
        case 'Hangup':
          this.#hear({ verb: 'Hangup' }, result);
          this.#ended = true;
          return undefined;
        case '#text':
          break;
        default:
          throw new TwilioProtocolError(`unexpected verb <${name}>`);
      }
    }
    // A document that runs out of verbs ends the call.
    this.#ended = true;
    return undefined;
  }

  async #perform(name: 'Say' | 'Play' | 'Pause', attrs: Record<string, string>, children: XmlNode[], result: TurnResult) {
    if (name === 'Say') {
      await this.#play({ verb: 'Say', text: textOf(children) }, result);
    } else if (name === 'Pause') {
      const seconds = Number(attrs.length ?? '1');
      if (this.#options.realPauses && !this.#options.playbackMs) await sleep(seconds * 1000);
      await this.#play({ verb: 'Pause', seconds }, result);
    } else {
      // Nothing documents <Play> starting before its file is downloaded: fetch it whole, then play.
      await this.#play(await this.#fetchAudio(textOf(children)), result);
    }
  }

  async #fetchAudio(location: string): Promise<Heard> {
    const url = this.#absolute(location);
    const started = performance.now();
    const response = await this.#fetch(this.#target(url));
    const bytes = Buffer.from(await response.arrayBuffer());
    const contentType = response.headers.get('content-type') ?? '';
    if (response.status !== 200) throw new TwilioProtocolError(`<Play> ${new URL(url).pathname} answered ${response.status}`);
    if (!/^audio\/(mpeg|wav|x-wav|basic)/.test(contentType)) {
      throw new TwilioProtocolError(`<Play> got ${contentType}, which Twilio cannot play`);
    }
    if (bytes.length === 0) throw new TwilioProtocolError('<Play> got an empty file');
    return { verb: 'Play', url, contentType, bytes: bytes.length, fetchMs: performance.now() - started };
  }

  /** The caller hears a verb, for as long as `playbackMs` says. */
  async #play(heard: Heard, result: TurnResult) {
    this.#hear(heard, result);
    const ms = this.#options.playbackMs?.(heard) ?? 0;
    if (ms > 0) await sleep(ms);
  }

  /** The caller hears `heard`, in the turn under way (`result`), if one is. */
  #hear(heard: Heard, result: TurnResult | undefined) {
    this.heard.push(heard);
    result?.heard.push(heard);
    this.#options.onHear?.(heard);
  }

  #request(url: string, extra: Record<string, string>): SentRequest {
    const params: Record<string, string> = {
      AccountSid: 'AC00000000000000000000000000000000',
      ApiVersion: '2010-04-01',
      CallSid: this.callSid,
      CallStatus: 'in-progress',
      Direction: 'inbound',
      From: this.#from,
      To: this.#to,
      ...extra,
    };
    const request = { url, params, token: randomUUID() };
    this.#last = request;
    return request;
  }

  async #post(request: SentRequest): Promise<{ status: number; body: string }> {
    const signature = getExpectedTwilioSignature(this.#options.authToken, request.url, request.params);
    const response = await this.#fetch(this.#target(request.url), {
      method: 'POST',
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        'x-twilio-signature': signature,
        'i-twilio-idempotency-token': request.token,
      },
      body: new URLSearchParams(request.params).toString(),
    });
    return { status: response.status, body: await response.text() };
  }

  #absolute(url: string): string {
    return new URL(url.trim(), `${this.#options.publicBaseUrl}/`).toString();
  }

  /** Twilio reaches the public URL; here we may have to reach it on another address. */
  #target(url: string): string {
    const target = this.#options.targetBaseUrl;
    return target ? rebase(url, this.#options.publicBaseUrl, target) : url;
  }

  /** The same for the relay socket: the public `wss://` URL, on the target's `ws://` address. */
  #socketTarget(url: string): { targetUrl?: string } {
    const target = this.#options.targetBaseUrl;
    if (!target) return {};
    return { targetUrl: rebase(url, asSocketUrl(this.#options.publicBaseUrl), asSocketUrl(target)) };
  }
}

/** `url` under `from`, moved under `to` (unchanged if it is not under `from`). */
function rebase(url: string, from: string, to: string): string {
  return url.startsWith(from) ? to + url.slice(from.length) : url;
}

/** `ws(s)://` for an `http(s)://` base URL, as the service names its socket. */
function asSocketUrl(base: string): string {
  return base.replace(/^http/i, 'ws');
}

function startTurn(before?: TurnResult): TurnResult {
  return { heard: [...(before?.heard ?? [])], documents: [...(before?.documents ?? [])], ended: false, elapsedMs: before?.elapsedMs ?? 0 };
}

function mergeTurn(result: TurnResult, later: TurnResult | undefined): void {
  if (!later) return;
  result.heard.push(...later.heard);
  result.documents.push(...later.documents);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function textOf(children: XmlNode[]): string {
  return children
    .map((child) => (typeof child['#text'] === 'string' ? child['#text'] : ''))
    .join('')
    .trim();
}
