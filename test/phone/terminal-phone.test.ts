/**
 * The terminal phone (`npm run call`, scripts/terminal-phone.ts) as a user runs
 * it: its own process, typing on its standard input, against the service in its
 * own process (`npm start`) with CALL_TRANSPORT=relay, whose agent is the
 * loopback fake. What it prints is the transcript the README shows.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { PHRASES } from '../../machines/call.machine.ts';
import { startFakeAgent, type FakeAgent } from '../fakes/agent-server.ts';
import { startServerProcess, type ServerProcess } from '../support/server-process.ts';
import { AUTH_TOKEN, PUBLIC_BASE_URL } from '../support/service.ts';

const PHONE = fileURLToPath(new URL('../../scripts/terminal-phone.ts', import.meta.url));

let agent: FakeAgent;
let server: ServerProcess;
let dataDir: string;

beforeAll(async () => {
  // The first question's answer never finishes on its own: only the caller's interruption ends it.
  agent = await startFakeAgent({
    behaviour: (request) =>
      request.message === 'When are you open?'
        ? { kind: 'events', data: [JSON.stringify({ text: 'We are open from nine' }), JSON.stringify({ text: ' to five on weekdays,' })], keepOpen: true }
        : { kind: 'reply' },
  });
  dataDir = mkdtempSync(join(tmpdir(), 'heyai-phone-'));
  server = await startServerProcess({ CALL_TRANSPORT: 'relay', PUBLIC_BASE_URL, TWILIO_AUTH_TOKEN: AUTH_TOKEN, KOOZIE_AGENT_URI: agent.url, DATA_DIR: dataDir });
});

beforeEach(() => {
  agent.requests.length = 0;
});

afterAll(async () => {
  server.child.kill('SIGTERM');
  await server.exited;
  await agent.close();
  rmSync(dataDir, { recursive: true, force: true });
});

/** `npm run call` pointed at the service, with a pipe for stdin. */
function terminalPhone() {
  const child: ChildProcessWithoutNullStreams = spawn(process.execPath, [PHONE], {
    env: { PATH: process.env.PATH ?? '', PUBLIC_BASE_URL, TWILIO_AUTH_TOKEN: AUTH_TOKEN, TARGET_URL: server.url },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let printed = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (printed += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (printed += chunk));
  const exited = new Promise<number | null>((resolve) => child.once('close', resolve));
  return {
    type: (line: string) => child.stdin.write(`${line}\n`),
    printed: () => printed,
    /** Waits until the transcript shows `text`. */
    until: (text: string) => expect.poll(() => printed, { timeout: 10_000 }).toContain(text),
    /** Waits until the phone has printed `text` and waits for the caller's next line. */
    prompted: (text: string) => expect.poll(() => printed.includes(text) && printed.endsWith('you> '), { timeout: 10_000 }).toBe(true),
    exited,
  };
}

describe('the terminal phone on ConversationRelay', () => {
  it('prints the greeting and answers as they stream, interrupts an answer when the caller types over it, and hangs up after goodbye', async () => {
    const phone = terminalPhone();
    await phone.prompted(PHRASES.greeting);
    phone.type('When are you open?');
    // Both chunks of the answer are on the screen; the rest never comes: the caller types over it.
    await phone.until('weekdays,');
    phone.type('What about Saturdays?');
    await phone.prompted('(history: 2)');
    phone.type('goodbye');

    expect(await phone.exited).toBe(0);
    const transcript = phone.printed().replace(/call CA[0-9a-f]{32}/, 'call CA…');
    expect(transcript).toBe(
      [
        `Calling ${PUBLIC_BASE_URL} (as Twilio would)\u2026 call CA\u2026`,
        `  \u{1F50A} ${PHRASES.greeting}`,
        '  (over ConversationRelay: answers print as they arrive; type over one to interrupt it)',
        'you> When are you open?',
        '  \u{1F50A} We are open from nine to five on weekdays, \u2014 (interrupted)',
        'you> What about Saturdays?',
        '  \u{1F50A} Agent heard: What about Saturdays? (history: 2)',
        'you> goodbye',
        `  \u{1F50A} ${PHRASES.goodbye}`,
        '  \u260E\uFE0F  The call was hung up.',
        '',
      ].join('\n'),
    );
    // The interruption stopped the agent's answer, and the service kept exactly what the caller saw of it.
    expect(agent.hungUp()).toBe(1);
    expect(agent.requests.map((r) => r.message)).toEqual(['When are you open?', 'What about Saturdays?']);
    expect(agent.requests[1]?.history).toEqual([
      { role: 'user', content: 'When are you open?' },
      { role: 'assistant', content: 'We are open from nine to five on weekdays,' },
    ]);
  });

  it('presses a key on a line starting with #, and takes a line typed once an answer has ended as the next turn', async () => {
    const phone = terminalPhone();
    await phone.prompted(PHRASES.greeting);
    phone.type('#5');
    await phone.prompted('Agent heard: 5 (history: 0)');
    phone.type('And again?');
    await phone.prompted('Agent heard: And again? (history: 2)');
    phone.type('bye');
    expect(await phone.exited).toBe(0);
    expect(phone.printed()).toContain('you> #5\n  \u{1F50A} Agent heard: 5 (history: 0)\nyou> And again?\n');
    expect(phone.printed()).not.toContain('(interrupted)');
    expect(phone.printed()).toContain(`  \u{1F50A} ${PHRASES.goodbye}\n`);
    expect(agent.requests[0]).toMatchObject({ message: '5', digits: '5' });
  });
});
