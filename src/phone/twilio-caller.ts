/**
 * A simulated Twilio: it places a call against the service the way Twilio's voice
 * platform does. It signs every webhook with twilio's own signing function, walks
 * the TwiML it gets back verb by verb (`<Say>`, `<Play>` fetched and checked,
 * `<Pause>`, `<Gather>` whose action gets the caller's words, `<Redirect>`,
 * `<Hangup/>`), and sends the status callback when the call ends.
 *
 * Used by the terminal phone (`npm run call`), the end-to-end tests and the
 * benchmark, so all three exercise the same contract Twilio does.
 *
 * @see https://www.twilio.com/docs/voice/twiml
 * @see https://www.twilio.com/docs/usage/webhooks/webhooks-security
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { XMLParser, XMLValidator } from 'fast-xml-parser';
import { getExpectedTwilioSignature } from 'twilio/lib/webhooks/webhooks.js';

export type Heard =
  | { verb: 'Say'; text: string }
  | { verb: 'Play'; url: string; contentType: string; bytes: number; fetchMs: number }
  | { verb: 'Pause'; seconds: number }
  | { verb: 'Hangup' };

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
  /** Called for every verb as the caller hears it. */
  onHear?: (heard: Heard) => void;
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

export class TwilioProtocolError extends Error {
  override readonly name = 'TwilioProtocolError';
}

interface SentRequest {
  url: string;
  params: Record<string, string>;
  token: string;
}

type XmlNode = Record<string, unknown> & { ':@'?: Record<string, string> };

const parser = new XMLParser({
  preserveOrder: true,
  ignoreAttributes: false,
  attributeNamePrefix: '',
  parseTagValue: false,
  trimValues: false,
});

export function newCallSid(): string {
  return `CA${randomBytes(16).toString('hex')}`;
}

export class SimulatedCall {
  readonly callSid: string;
  readonly heard: Heard[] = [];
  readonly #options: CallerOptions;
  readonly #fetch: typeof globalThis.fetch;
  readonly #from: string;
  readonly #to: string;
  #pendingGather: string | undefined;
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

  /** The call connects: Twilio requests `/voice` and plays what it says. */
  dial(): Promise<TurnResult> {
    this.#startedAt = Date.now();
    return this.#turn(`${this.#options.publicBaseUrl}/voice`, { CallStatus: 'ringing' });
  }

  /** The caller speaks (or stays silent with `null`) at the current `<Gather>`. */
  say(text: string | null, confidence = 0.92): Promise<TurnResult> {
    if (this.#ended) throw new TwilioProtocolError('the call has ended');
    if (!this.#pendingGather) throw new TwilioProtocolError('the service is not listening (no <Gather> pending)');
    const action = this.#pendingGather;
    const extra: Record<string, string> = text === null ? {} : { SpeechResult: text, Confidence: String(confidence) };
    return this.#turn(action, extra);
  }

  /** Twilio did not get an answer and sends the same request again (same idempotency token). */
  async retryLast(): Promise<string> {
    if (!this.#last) throw new TwilioProtocolError('nothing to retry');
    const { status, body } = await this.#post(this.#last);
    if (status !== 200) throw new TwilioProtocolError(`retry answered ${status}: ${body}`);
    return body;
  }

  /** The caller hangs up (or the call ended): Twilio's status callback. */
  async hangUp(status = 'completed'): Promise<number> {
    this.#ended = true;
    const duration = String(Math.round((Date.now() - this.#startedAt) / 1000));
    const request = this.#request(`${this.#options.publicBaseUrl}/call-status`, { CallStatus: status, CallDuration: duration });
    return (await this.#post(request)).status;
  }

  /** Sends one signed webhook for this call and returns the raw answer (for tests of single requests). */
  async webhook(path: string, extra: Record<string, string> = {}): Promise<{ status: number; body: string }> {
    return this.#post(this.#request(`${this.#options.publicBaseUrl}${path}`, extra));
  }

  async #turn(url: string, extra: Record<string, string>): Promise<TurnResult> {
    const started = performance.now();
    const result: TurnResult = { heard: [], documents: [], ended: false, elapsedMs: 0 };
    this.#pendingGather = undefined;
    let next: { url: string; extra: Record<string, string> } | undefined = { url, extra };
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
    result.elapsedMs = performance.now() - started;
    return result;
  }

  /** Executes one TwiML document; returns the request it leads to, if any. */
  async #walk(twiml: string, result: TurnResult): Promise<{ url: string; extra: Record<string, string> } | undefined> {
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
          this.#pendingGather = this.#absolute(attrs.action);
          return undefined;
        }
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

  #hear(heard: Heard, result: TurnResult) {
    this.heard.push(heard);
    result.heard.push(heard);
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
    if (!target || !url.startsWith(this.#options.publicBaseUrl)) return url;
    return target + url.slice(this.#options.publicBaseUrl.length);
  }
}

/** Parses a TwiML document strictly: well-formed XML with a `<Response>` root. */
export function parseTwiml(twiml: string): XmlNode[] {
  const valid = XMLValidator.validate(twiml);
  if (valid !== true) throw new TwilioProtocolError(`TwiML is not well-formed XML: ${valid.err.msg}`);
  const document = parser.parse(twiml) as XmlNode[];
  const root = document.find((node) => 'Response' in node);
  if (!root) throw new TwilioProtocolError('TwiML has no <Response> root');
  return (root.Response as XmlNode[]) ?? [];
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
