/**
 * The ConversationRelay transport's output on the socket: machine state → the
 * messages Twilio speaks. Pure; golden-tested. The agent's own words do not pass
 * here: they stream to the socket chunk by chunk as they arrive (src/engine/turn.ts,
 * through the session's text sink). What passes here is every other line the
 * machine decides the caller hears, and the end of the session:
 *
 * - `listening` with a fixed phrase (a re-prompt, an apology) the session has not
 *   said yet: one `text` message, `last: true`. The phrase of the floor the socket
 *   was opened at is the `<ConversationRelay welcomeGreeting>`, already said by Twilio.
 * - a working state whose filler is the hold line, once per turn: the hold line.
 * - `terminating`: `end`. Twilio then requests the `<Connect action>` URL, whose
 *   TwiML says the closing line and hangs up (webhook-twiml.ts), so the goodbye is
 *   heard in full before the line closes.
 *
 * @see https://www.twilio.com/docs/voice/conversationrelay/websocket-messages
 */
import { PHRASES } from '../../../machines/call.machine.ts';
import type { CallView } from '../../engine/call-engine.ts';
import type { ServiceMessage } from './messages.ts';

/** What a session has already said, so a view rendered twice says nothing twice. */
export interface Said {
  /** The floor whose phrase was said. */
  floor: number;
  /** The number of turns when the hold line was last said. */
  holdAtTurns: number;
  ended: boolean;
}

export function relayOutputOf(view: CallView, said: Said): { messages: ServiceMessage[]; said: Said } {
  const { context } = view;
  const messages: ServiceMessage[] = [];
  const next: Said = { ...said };
  if (view.state === 'listening' && context.prompt.kind === 'phrase' && context.floor > said.floor) {
    messages.push({ type: 'text', token: context.prompt.text, last: true });
    next.floor = context.floor;
  } else if ((view.state === 'thinking' || view.state === 'speaking') && context.filler === 'hold' && context.turns.length !== said.holdAtTurns) {
    messages.push({ type: 'text', token: PHRASES.hold, last: true });
    next.holdAtTurns = context.turns.length;
  } else if (view.state === 'terminating' && !said.ended) {
    messages.push({ type: 'end', handoffData: JSON.stringify({ reasonCode: 'call-ending', reason: context.endReason ?? context.ending ?? 'goodbye' }) });
    next.ended = true;
  }
  return { messages, said: next };
}
