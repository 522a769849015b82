/**
 * A call over ConversationRelay, placed the way Twilio places one: the signed
 * `/voice` webhook, whose `<Connect><ConversationRelay>` names the socket, then
 * the signed WebSocket upgrade and `setup` (src/phone/relay-caller.ts), and, when
 * the session ends, the signed `<Connect action>` request.
 */
import { getExpectedTwilioSignature } from 'twilio/lib/webhooks/webhooks.js';
import { newCallSid } from '../../src/phone/twilio-caller.ts';
import { readRelayConnect, SimulatedRelaySession, type RelayConnect } from '../../src/phone/relay-caller.ts';
import { AUTH_TOKEN, PUBLIC_BASE_URL } from './service.ts';

export interface RelayCall {
  callSid: string;
  /** The `<ConversationRelay>` the last webhook answered. */
  connect: RelayConnect;
  session: SimulatedRelaySession;
}

/** A signed webhook POST, as Twilio sends it; returns the status and the body. */
export async function twilioPost(
  address: string,
  path: string,
  form: Record<string, string>,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: string }> {
  const signature = getExpectedTwilioSignature(AUTH_TOKEN, PUBLIC_BASE_URL + path, form);
  const response = await fetch(address + path, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-twilio-signature': signature, ...headers },
    body: new URLSearchParams(form).toString(),
  });
  return { status: response.status, body: await response.text() };
}

/** The socket's loopback address for a public `wss://…` URL. */
export function targetOf(address: string, publicUrl: string): string {
  const url = new URL(publicUrl);
  return address.replace(/^http/, 'ws') + url.pathname + url.search;
}

/** Dials the service: `/voice`, then the relay socket it names. */
export async function dialRelay(address: string, options: { callSid?: string; from?: string; to?: string } = {}): Promise<RelayCall> {
  const callSid = options.callSid ?? newCallSid();
  const from = options.from ?? '+15550100001';
  const to = options.to ?? '+15550100002';
  const voice = await twilioPost(address, '/voice', { CallSid: callSid, From: from, To: to, CallStatus: 'ringing' });
  if (voice.status !== 200) throw new Error(`/voice answered ${voice.status}: ${voice.body}`);
  return openSession(address, voice.body, { callSid, from, to });
}

/** Connects as the `<Connect><ConversationRelay>` in `twiml` says. */
export async function openSession(address: string, twiml: string, call: { callSid: string; from: string; to: string }): Promise<RelayCall> {
  const connect = readRelayConnect(twiml);
  const session = await SimulatedRelaySession.connect({ url: connect.url, targetUrl: targetOf(address, connect.url), authToken: AUTH_TOKEN, ...call });
  return { callSid: call.callSid, connect, session };
}

/** Twilio's request to the `<Connect action>` when a session has ended. */
export function sessionEnded(address: string, connect: RelayConnect, callSid: string, form: Record<string, string> = {}) {
  const path = new URL(connect.action).pathname;
  return twilioPost(address, path, { CallSid: callSid, CallStatus: 'in-progress', ...form });
}
