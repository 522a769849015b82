/**
 * The terminal phone: plays Twilio against a running service. It places a call,
 * signs every webhook like Twilio, prints what the caller hears and reads the
 * caller's lines from standard input.
 *
 *   npm start            # in one terminal
 *   npm run call         # in another
 *
 * An empty line is silence; Ctrl-D (or "goodbye") ends the call. It signs with
 * TWILIO_AUTH_TOKEN, or with the local development token the service keeps in
 * DATA_DIR. PUBLIC_BASE_URL / PORT say where the service is.
 */
import { createInterface } from 'node:readline/promises';
import { loadConfig } from '../src/config.ts';
import { SimulatedCall, type Heard } from '../src/phone/twilio-caller.ts';

const config = loadConfig({ ...process.env, NODE_ENV: 'development' });
const target = process.env.TARGET_URL ?? `http://127.0.0.1:${config.port}`;

function show(heard: Heard) {
  if (heard.verb === 'Say') console.log(`  \u{1F50A} ${heard.text}`);
  else if (heard.verb === 'Play') console.log(`  \u{1F50A} [plays ${Math.round(heard.bytes / 1024)} KB of ${heard.contentType}]`);
  else if (heard.verb === 'Pause') console.log(`  \u2026 (${heard.seconds} s pause)`);
  else console.log('  \u260E\uFE0F  The call was hung up.');
}

const call = new SimulatedCall({
  publicBaseUrl: config.publicBaseUrl,
  targetBaseUrl: target,
  authToken: config.twilioAuthToken,
  onHear: show,
});

const lines = createInterface({ input: process.stdin, terminal: false });
// Iterate rather than question(): piped lines that arrive early are kept, not dropped.
const input = lines[Symbol.asyncIterator]();
console.log(`Calling ${config.publicBaseUrl} (as Twilio would)\u2026 call ${call.callSid}`);
try {
  await call.dial();
  while (!call.ended) {
    process.stdout.write('you> ');
    const next = await input.next();
    if (next.done) break;
    const words = next.value.trim();
    if (!process.stdin.isTTY) process.stdout.write(`${words}\n`);
    await call.say(words === '' ? null : words);
  }
} catch (error) {
  console.error(`The call failed: ${error instanceof Error ? error.message : String(error)}`);
  if (String(error).includes('ECONNREFUSED')) console.error(`Is the service running? Start it with: npm start (expected at ${target})`);
  process.exitCode = 1;
} finally {
  if (call.heard.length > 0) await call.hangUp('completed').catch(() => undefined);
  lines.close();
}
