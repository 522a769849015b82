/**
 * The terminal phone: plays Twilio against a running service. It places a call,
 * signs every webhook like Twilio, prints what the caller hears and reads the
 * caller's lines from standard input.
 *
 *   npm start            # in one terminal (CALL_TRANSPORT=relay npm start for ConversationRelay)
 *   npm run call         # in another
 *
 * A line is what the caller says; an empty line is silence; a line starting with
 * `#` presses the keys after it (`#5`, `#12*`); Ctrl-D (or "goodbye") ends the
 * call. When the service answers `<Connect><ConversationRelay>`, the call goes
 * over the relay socket: the answer is printed token by token as it arrives, and
 * a line typed while it is still arriving interrupts it (the service hears what
 * was printed so far, then the line), as a caller speaking over it would.
 *
 * It signs with TWILIO_AUTH_TOKEN, or with the local development token the
 * service keeps in DATA_DIR. PUBLIC_BASE_URL / PORT say where the service is.
 */
import { createInterface } from 'node:readline';
import { loadConfig } from '../src/config.ts';
import { SimulatedCall, type Heard, type TurnResult } from '../src/phone/twilio-caller.ts';
import type { ServiceMessage } from '../src/transports/relay/messages.ts';

const config = loadConfig({ ...process.env, NODE_ENV: 'development' });
const target = process.env.TARGET_URL ?? `http://127.0.0.1:${config.port}`;
const echo = !process.stdin.isTTY;
const out = (text: string) => process.stdout.write(text);

/** An answer's tokens are being printed on the current line. */
let answerLine = false;
/** `you> ` is the last thing printed. */
let atPrompt = false;

const ENDINGS = { last: '', interrupted: ' \u2014 (interrupted)', closed: ' \u2014 (the line dropped)' } as const;

function show(heard: Heard) {
  if (heard.verb === 'ConversationRelay' && heard.from === 'text') {
    // Its tokens are on the line already.
    if (answerLine) out(`${ENDINGS[heard.ending]}\n`);
    answerLine = false;
    return;
  }
  if (atPrompt) out('\n');
  atPrompt = false;
  if (heard.verb === 'Say' || heard.verb === 'ConversationRelay') console.log(`  \u{1F50A} ${heard.text}`);
  else if (heard.verb === 'Play') console.log(`  \u{1F50A} [plays ${Math.round(heard.bytes / 1024)} KB of ${heard.contentType}]`);
  else if (heard.verb === 'Pause') console.log(`  \u2026 (${heard.seconds} s pause)`);
  else console.log('  \u260E\uFE0F  The call was hung up.');
}

/** ConversationRelay's `text` tokens, printed as they arrive, one answer a line. */
function stream(message: ServiceMessage) {
  if (message.type !== 'text' || message.token === '') return;
  if (!answerLine) {
    out(`${atPrompt ? '\n' : ''}  \u{1F50A} `);
    atPrompt = false;
    answerLine = true;
  }
  out(message.token);
}

const call = new SimulatedCall({
  publicBaseUrl: config.publicBaseUrl,
  targetBaseUrl: target,
  authToken: config.twilioAuthToken,
  onHear: show,
  onRelayMessage: stream,
});

/** What the caller does next: a line to say (or keys to press), or an interruption already sent. */
type Step = { words: string } | { interrupting: Promise<TurnResult> };
const steps: Step[] = [];
let inputEnded = false;
let wake: (() => void) | undefined;

function push(step: Step) {
  steps.push(step);
  wake?.();
}

async function nextStep(): Promise<Step | undefined> {
  while (steps.length === 0 && !inputEnded) await new Promise<void>((resolve) => (wake = resolve));
  return steps.shift();
}

/** Prints the line being taken, for piped input (a terminal has echoed it already). */
function taken(words: string) {
  if (echo) out(`${atPrompt ? '' : 'you> '}${words}\n`);
  atPrompt = false;
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity, terminal: false });
lines.on('line', (line) => {
  const words = line.trim();
  // Words typed over an answer still arriving: the caller speaks over it.
  if (words !== '' && !words.startsWith('#') && steps.length === 0 && call.speaking !== undefined) {
    const interrupting = call.interrupt(words);
    interrupting.catch(() => undefined); // awaited by the loop below, unless the call is over by then
    taken(words);
    push({ interrupting });
    return;
  }
  push({ words });
});
lines.on('close', () => {
  inputEnded = true;
  wake?.();
});

console.log(`Calling ${config.publicBaseUrl} (as Twilio would)\u2026 call ${call.callSid}`);
try {
  await call.dial();
  if (call.relaySession) console.log('  (over ConversationRelay: answers print as they arrive; type over one to interrupt it)');
  while (!call.ended) {
    if (steps.length === 0 && !answerLine) {
      out('you> ');
      atPrompt = true;
    }
    const step = await nextStep();
    if (!step) break;
    if ('interrupting' in step) {
      await step.interrupting;
    } else {
      taken(step.words);
      if (step.words.startsWith('#')) await call.press(step.words.slice(1));
      else await call.say(step.words === '' ? null : step.words);
    }
  }
} catch (error) {
  if (answerLine || atPrompt) out('\n');
  console.error(`The call failed: ${error instanceof Error ? error.message : String(error)}`);
  if (String(error).includes('ECONNREFUSED')) console.error(`Is the service running? Start it with: npm start (expected at ${target})`);
  process.exitCode = 1;
} finally {
  if (call.heard.length > 0) await call.hangUp('completed').catch(() => undefined);
  lines.close();
}
