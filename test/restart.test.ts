/**
 * A process killed with SIGKILL and started again continues every call where it
 * was, history included: the embedded store commits before TwiML goes back.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SimulatedCall } from '../src/phone/twilio-caller.ts';
import { startFakeAgent, type FakeAgent } from './fakes/agent-server.ts';
import { AUTH_TOKEN, PUBLIC_BASE_URL, spoken } from './support/service.ts';
import { startServerProcess, type ServerProcess } from './support/server-process.ts';

let agent: FakeAgent;
let dataDir: string;
const processes: ServerProcess[] = [];

beforeAll(async () => {
  agent = await startFakeAgent();
  dataDir = mkdtempSync(join(tmpdir(), 'heyai-restart-'));
});
afterAll(async () => {
  for (const p of processes) p.child.kill('SIGKILL');
  await agent.close();
  rmSync(dataDir, { recursive: true, force: true });
});

function env(): Record<string, string> {
  return {
    PUBLIC_BASE_URL,
    TWILIO_AUTH_TOKEN: AUTH_TOKEN,
    KOOZIE_AGENT_URI: agent.url,
    DATA_DIR: dataDir,
    WEBHOOK_DEADLINE_MS: '300',
  };
}

async function start(port?: number) {
  const p = await startServerProcess(env(), port);
  processes.push(p);
  return p;
}

function callerFor(server: ServerProcess, callSid?: string) {
  return new SimulatedCall({ publicBaseUrl: PUBLIC_BASE_URL, targetBaseUrl: server.url, authToken: AUTH_TOKEN, ...(callSid ? { callSid } : {}) });
}

describe('restart after SIGKILL', () => {
  it('continues a call between turns with its history', async () => {
    const first = await start();
    const call = callerFor(first);
    await call.dial();
    await call.say('Remember the number forty two');
    first.child.kill('SIGKILL');
    expect(await first.exited).toBe('SIGKILL');

    const second = await start(first.port);
    const turn = await call.say('What number did I say?');
    expect(spoken(turn.heard)).toEqual(['Agent heard: What number did I say? (history: 2)']);
    expect(agent.requests.at(-1)?.history?.[0]).toEqual({ role: 'user', content: 'Remember the number forty two' });
    second.child.kill('SIGKILL');
  });

  it('finishes a turn that was under way when the process died', async () => {
    const first = await start();
    const call = callerFor(first);
    await call.dial();
    agent.setBehaviour({ kind: 'reply', firstChunkDelayMs: 5_000 });
    const held = await call.webhook('/speech-result', { SpeechResult: 'Are you still working on it?', Confidence: '0.8' });
    expect(held.body).toContain('<Redirect');
    first.child.kill('SIGKILL');
    await first.exited;

    agent.setBehaviour({ kind: 'reply' });
    const requestsBefore = agent.requests.length;
    const second = await start(first.port);
    const resumed = callerFor(second, call.callSid);
    let body = '';
    for (let i = 0; i < 20 && !body.includes('<Gather'); i++) body = (await resumed.webhook('/continue')).body;
    expect(body).toContain('Agent heard: Are you still working on it? (history: 0)');
    // The interrupted turn was asked again exactly once on the new process.
    expect(agent.requests.length - requestsBefore).toBe(1);
    second.child.kill('SIGKILL');
  });
});
