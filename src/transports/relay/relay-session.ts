/**
 * One ConversationRelay WebSocket: it owns the socket and nothing else. It
 * translates each of Twilio's messages into a machine event (the caller's final
 * `prompt` → SPEECH, `interrupt` → INTERRUPT, `dtmf` → DIGITS), hands it to the
 * engine, which commits every turn as on the webhook path, and sends what the
 * machine's state says (relay-output.ts). The agent's words reach the socket as
 * they arrive, through `text()`, the session's text sink (src/engine/turn.ts).
 *
 * Messages are taken one at a time, in order. A malformed one is logged once per
 * session and ignored; it never closes the socket.
 *
 * @see https://www.twilio.com/docs/voice/conversationrelay/websocket-messages
 */
import type { Logger } from 'pino';
import type { WebSocket } from 'ws';
import type { CallEvent } from '../../../machines/call.machine.ts';
import type { CallEngine, CallView } from '../../engine/call-engine.ts';
import type { TextSink } from '../../engine/turn.ts';
import { parseTwilioMessage, RelayMessageError, serialiseServiceMessage, type ServiceMessage, type TwilioMessage } from './messages.ts';
import { relayOutputOf, type Said } from './relay-output.ts';

/** The open sessions of this process, by call: the engine's actors and results find their socket here. */
export class RelaySessions {
  readonly #byCall = new Map<string, RelaySession>();

  get(callSid: string): RelaySession | undefined {
    return this.#byCall.get(callSid);
  }

  add(session: RelaySession): void {
    // A newer session for the call (Twilio reconnected) replaces an older one.
    this.#byCall.get(session.callSid)?.close(1000, 'replaced by a newer session');
    this.#byCall.set(session.callSid, session);
  }

  remove(session: RelaySession): void {
    if (this.#byCall.get(session.callSid) === session) this.#byCall.delete(session.callSid);
  }

  get size(): number {
    return this.#byCall.size;
  }

  /** A view committed after its step had answered: the session of its call, if here, says what it must. */
  settled(callSid: string, view: CallView): void {
    this.#byCall.get(callSid)?.render(view);
  }
}

export interface RelaySessionOptions {
  engine: CallEngine;
  sessions: RelaySessions;
  log: Logger;
  now(): number;
  /** How long the caller waits for the agent's first words before hearing that the turn is slow (SLOW). */
  slowAfterMs: number;
}

/** How long Twilio has to send `setup` after the upgrade. */
const SETUP_TIMEOUT_MS = 10_000;

export class RelaySession implements TextSink {
  callSid = '';
  readonly #socket: WebSocket;
  readonly #options: RelaySessionOptions;
  #said: Said = { floor: 0, holdAtTurns: -1, ended: false };
  #queue: Promise<unknown> = Promise.resolve();
  #malformedLogged = false;
  #slow: ReturnType<typeof setTimeout> | undefined;
  #setupTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(socket: WebSocket, options: RelaySessionOptions) {
    this.#socket = socket;
    this.#options = options;
    socket.on('message', (data, isBinary) => this.#receive(data as Buffer, isBinary));
    socket.on('close', () => this.#closed());
    socket.on('error', (error) => options.log.warn({ err: error, callSid: this.callSid || undefined }, 'relay socket error'));
    this.#setupTimer = setTimeout(() => {
      if (!this.callSid) this.close(1008, 'no setup message');
    }, SETUP_TIMEOUT_MS);
    this.#setupTimer.unref();
  }

  /** The agent's words as they arrive (the text sink of the call). */
  text(token: string, last: boolean): void {
    clearTimeout(this.#slow);
    this.#send({ type: 'text', token, last });
  }

  render(view: CallView): void {
    const { messages, said } = relayOutputOf(view, this.#said);
    this.#said = said;
    for (const message of messages) this.#send(message);
    if (view.state === 'ended') this.close(1000, 'the call is over');
  }

  close(code: number, reason: string): void {
    this.#socket.close(code, reason);
  }

  #receive(data: Buffer, isBinary: boolean): void {
    let message: TwilioMessage;
    try {
      message = parseTwilioMessage(data, isBinary);
    } catch (error) {
      if (!(error instanceof RelayMessageError)) throw error;
      if (!this.#malformedLogged) this.#options.log.warn({ callSid: this.callSid || undefined, reason: error.message }, 'ignored a malformed ConversationRelay message (logged once per session)');
      this.#malformedLogged = true;
      return;
    }
    this.#queue = this.#queue.then(() => this.#take(message)).catch((error: unknown) => {
      this.#options.log.error({ err: error, callSid: this.callSid || undefined }, 'a ConversationRelay message could not be handled');
    });
  }

  async #take(message: TwilioMessage): Promise<void> {
    const { log, now } = this.#options;
    if (message.type === 'setup') return this.#setup(message.callSid);
    if (!this.callSid) {
      log.warn({ type: message.type }, 'ignored a ConversationRelay message before setup');
      return;
    }
    switch (message.type) {
      case 'prompt':
        // Partial transcripts (`last: false`) are not the caller's turn yet.
        if (!message.last) return;
        return this.#step(message.voicePrompt.trim() === '' ? { type: 'SILENCE', at: now() } : { type: 'SPEECH', text: message.voicePrompt, at: now() });
      case 'interrupt':
        return this.#step({ type: 'INTERRUPT', heard: message.utteranceUntilInterrupt, at: now() });
      case 'dtmf':
        return this.#step({ type: 'DIGITS', digits: message.digit, at: now() });
      case 'error':
        log.warn({ callSid: this.callSid, description: message.description }, 'ConversationRelay refused a message');
        return;
      case 'ignored':
        log.debug({ callSid: this.callSid, messageType: message.messageType }, 'ignored a ConversationRelay message of an unknown type');
        return;
    }
  }

  async #setup(callSid: string): Promise<void> {
    if (this.callSid) {
      this.#options.log.warn({ callSid }, 'ignored a second ConversationRelay setup');
      return;
    }
    clearTimeout(this.#setupTimer);
    const answer = await this.#options.engine.handle(callSid, undefined, { until: 'claimed' });
    if (answer.kind !== 'answer') {
      this.#options.log.warn({ callSid }, 'ConversationRelay session for a call this service does not know; closed');
      this.close(1008, 'unknown call');
      return;
    }
    this.callSid = callSid;
    // Whatever the caller is hearing now was the session's welcome greeting.
    this.#said = { ...this.#said, floor: answer.view.context.floor };
    this.#options.sessions.add(this);
    this.render(answer.view);
  }

  async #step(event: CallEvent): Promise<void> {
    const answer = await this.#options.engine.handle(this.callSid, event, { until: 'claimed' });
    if (answer.kind !== 'answer') return;
    this.render(answer.view);
    if (answer.view.state === 'thinking') this.#armSlow();
  }

  /** No words from the agent within the wait: the machine decides what the caller hears (SLOW). */
  #armSlow(): void {
    clearTimeout(this.#slow);
    this.#slow = setTimeout(() => {
      this.#queue = this.#queue.then(() => this.#step({ type: 'SLOW', at: this.#options.now() })).catch(() => undefined);
    }, this.#options.slowAfterMs);
    this.#slow.unref();
  }

  #send(message: ServiceMessage): void {
    if (this.#socket.readyState !== this.#socket.OPEN) return;
    this.#socket.send(serialiseServiceMessage(message));
  }

  #closed(): void {
    clearTimeout(this.#slow);
    clearTimeout(this.#setupTimer);
    if (this.callSid) this.#options.sessions.remove(this);
  }
}
