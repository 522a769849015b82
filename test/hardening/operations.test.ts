/**
 * Operations: SIGTERM drains the turns in flight (the process as `npm start` runs
 * it), readiness follows the store, and a bad configuration stops the start with
 * one clear line naming the variable.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SimulatedCall } from '../../src/phone/twilio-caller.ts';
import { SqliteCallStore } from '../../src/store/sqlite-store.ts';
import { startFakeAgent, type FakeAgent } from '../fakes/agent-server.ts';
import { startServerProcess, type ServerProcess } from '../support/server-process.ts';
import { AUTH_TOKEN, PUBLIC_BASE_URL, spoken, startService } from '../support/service.ts';
import { FaultyCallStore, figure, linesWithSecrets } from './support.ts';

const SERVER = fileURLToPath(new URL('../../src/server.ts', import.meta.url));

let agent: FakeAgent;
const dirs: string[] = [];
const processes: ServerProcess[] = [];

beforeAll(async () => {
  agent = await startFakeAgent();
});
afterAll(async () => {
  for (const p of processes) p.child.kill('SIGKILL');
  await agent.close();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'heyai-ops-'));
  dirs.push(dir);
  return dir;
}

async function serverProcess(dataDir: string, env: Record<string, string> = {}) {
  const server = await startServerProcess({
    PUBLIC_BASE_URL,
    TWILIO_AUTH_TOKEN: AUTH_TOKEN,
    KOOZIE_AGENT_URI: agent.url,
    DATA_DIR: dataDir,
    ...env,
  });
  processes.push(server);
  return server;
}

function callerFor(server: ServerProcess, callSid?: string) {
  return new SimulatedCall({ publicBaseUrl: PUBLIC_BASE_URL, targetBaseUrl: server.url, authToken: AUTH_TOKEN, ...(callSid ? { callSid } : {}) });
}

async function waitFor(condition: () => boolean, timeoutMs = 5_000) {
  const until = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > until) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

async function storedRecord(dataDir: string, callSid: string) {
  const store = new SqliteCallStore(dataDir);
  try {
    return await store.getRecord(callSid);
  } finally {
    await store.close();
  }
}

describe('SIGTERM', () => {
  it('lets a webhook waiting on the agent finish: it gets its TwiML, the turn is stored, the process exits 0', async () => {
    const dataDir = tempDir();
    const server = await serverProcess(dataDir, { WEBHOOK_DEADLINE_MS: '5000' });
    const call = callerFor(server);
    await call.dial();
    agent.setBehaviour({ kind: 'reply', firstChunkDelayMs: 1_500 });
    const asked = agent.requests.length;
    const inFlight = call.webhook('/speech-result', { SpeechResult: 'Are you closing?', Confidence: '0.9' });
    await waitFor(() => agent.requests.length > asked);
    server.child.kill('SIGTERM');

    const answer = await inFlight;
    expect(answer.status).toBe(200);
    expect(answer.body).toContain('Agent heard: Are you closing? (history: 0)');
    expect(answer.body).toContain('<Gather');
    expect(await server.exited).toBe(0);
    const record = await storedRecord(dataDir, call.callSid);
    expect(record?.turns.map((t) => t.reply)).toEqual(['Agent heard: Are you closing? (history: 0)']);
    expect(server.output.some((line) => line.includes('shut down cleanly'))).toBe(true);
    expect(linesWithSecrets(server.output, [AUTH_TOKEN])).toEqual([]);
    agent.setBehaviour({ kind: 'reply' });
  });

  it('finishes and stores a turn still working after its webhook answered with a hold; a new process plays it', async () => {
    const dataDir = tempDir();
    const server = await serverProcess(dataDir, { WEBHOOK_DEADLINE_MS: '300' });
    const call = callerFor(server);
    await call.dial();
    agent.setBehaviour({ kind: 'reply', firstChunkDelayMs: 1_500 });
    const held = await call.webhook('/speech-result', { SpeechResult: 'Still there?', Confidence: '0.9' });
    expect(held.body).toContain('<Redirect');
    server.child.kill('SIGTERM');
    expect(await server.exited).toBe(0);
    expect(server.output.some((line) => /"liveCalls":1/.test(line))).toBe(true);
    const record = await storedRecord(dataDir, call.callSid);
    expect(record).toMatchObject({ state: 'listening' });
    expect(record?.turns.map((t) => t.reply)).toEqual(['Agent heard: Still there? (history: 0)']);

    // Twilio's next request (the <Redirect>) lands on another instance: the answer is there.
    agent.setBehaviour({ kind: 'reply' });
    const asked = agent.requests.length;
    const next = await serverProcess(dataDir);
    const resumed = await callerFor(next, call.callSid).webhook('/continue');
    expect(resumed.body).toContain('Agent heard: Still there? (history: 0)');
    expect(agent.requests.length).toBe(asked);
    next.child.kill('SIGTERM');
    expect(await next.exited).toBe(0);
    figure('operations: SIGTERM with a webhook in flight and with a turn working after its hold: TwiML delivered, turns stored, exit 0');
  });
});

describe('readiness', () => {
  it('answers 503 while the store is unhealthy (or its check throws), 200 again once it recovers; liveness stays 200', async () => {
    const dataDir = tempDir();
    const store = new FaultyCallStore(new SqliteCallStore(dataDir));
    const svc = await startService({ KOOZIE_AGENT_URI: agent.url }, { store, dataDir });
    try {
      const ready = async () => {
        const res = await fetch(`${svc.address}/readyz`);
        return { status: res.status, body: (await res.json()) as Record<string, unknown> };
      };
      expect(await ready()).toEqual({ status: 200, body: { status: 'ready', store: 'sqlite' } });
      store.health = false;
      expect(await ready()).toEqual({ status: 503, body: { status: 'store unavailable', store: 'sqlite' } });
      store.health = 'throw';
      expect((await ready()).status).toBe(503);
      expect((await fetch(`${svc.address}/healthz`)).status).toBe(200);
      store.health = true;
      expect((await ready()).status).toBe(200);
    } finally {
      await svc.close();
    }
  });
});

/** `node src/server.ts` with only this environment; resolves with what it printed and its exit code. */
function startWith(env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [SERVER], { env: { PATH: process.env.PATH ?? '', PORT: '0', HOST: '127.0.0.1', ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('configuration errors', () => {
  const cases: Array<[string, Record<string, string>]> = [
    ['PORT', { PORT: 'abc' }],
    ['PORT', { PORT: '70000' }],
    ['TWILIO_AUTH_TOKEN', { NODE_ENV: 'production', PUBLIC_BASE_URL: 'https://voice.example.test' }],
    ['PUBLIC_BASE_URL', { NODE_ENV: 'production', TWILIO_AUTH_TOKEN: AUTH_TOKEN }],
    ['PUBLIC_BASE_URL', { NODE_ENV: 'production', TWILIO_AUTH_TOKEN: AUTH_TOKEN, PUBLIC_BASE_URL: 'http://voice.example.test' }],
    ['ELEVEN_VOICE_ID', { ELEVENLABS_API_KEY: 'sk-something' }],
    ['ELEVENLABS_API_KEY', { ELEVEN_VOICE_ID: 'voice-1' }],
    ['ELEVEN_OUTPUT_FORMAT', { ELEVENLABS_API_KEY: 'sk-something', ELEVEN_VOICE_ID: 'voice-1', ELEVEN_OUTPUT_FORMAT: 'pcm_16000' }],
    ['GCP_PROJECT_ID', { CALL_STORE: 'firestore' }],
    ['CALL_STORE', { CALL_STORE: 'postgres' }],
    ['ADMIN_TOKEN', { ADMIN_TOKEN: 'short' }],
    ['LOG_LEVEL', { LOG_LEVEL: 'loud' }],
    ['KOOZIE_AGENT_URI', { KOOZIE_AGENT_URI: 'not a url' }],
    ['WEBHOOK_DEADLINE_MS', { WEBHOOK_DEADLINE_MS: '50' }],
    ['WEBHOOK_ANSWER_BUDGET_MS', { WEBHOOK_DEADLINE_MS: '3000', WEBHOOK_ANSWER_BUDGET_MS: '2000' }],
    ['RATE_LIMIT_PER_CALLER_PER_MINUTE', { RATE_LIMIT_PER_CALLER_PER_MINUTE: '0' }],
    ['RATE_LIMIT_GLOBAL_PER_SECOND', { RATE_LIMIT_GLOBAL_PER_SECOND: 'lots' }],
    ['DATA_DIR', { DATA_DIR: '/dev/null/calls', TWILIO_AUTH_TOKEN: AUTH_TOKEN }],
    ['DATA_DIR', { DATA_DIR: '/dev/null/calls' }],
  ];

  it(`stops the start with exit code 1 and one line naming the variable (${cases.length} bad environments)`, { timeout: 60_000 }, async () => {
    const results: Array<Awaited<ReturnType<typeof startWith>>> = [];
    // A few at a time: each start loads the whole service.
    for (let i = 0; i < cases.length; i += 4) {
      results.push(...(await Promise.all(cases.slice(i, i + 4).map(([, env]) => startWith({ DATA_DIR: tempDir(), ...env })))));
    }
    for (const [i, [variable, env]] of cases.entries()) {
      const { code, stdout, stderr } = results[i]!;
      const what = `${JSON.stringify(env)} → exit ${code}, stderr ${JSON.stringify(stderr)}`;
      expect(code, what).toBe(1);
      expect(stderr.endsWith('\n') && stderr.trimEnd().split('\n'), what).toHaveLength(1);
      expect(stderr, what).toMatch(new RegExp(`^Configuration error: ${variable}: `));
      expect(stderr, what).not.toMatch(/\n\s+at /);
      expect(stdout, what).toBe('');
      // A bad value is echoed back to help, but never a secret that was set alongside it.
      expect(stderr).not.toContain(AUTH_TOKEN);
    }
    figure(`operations: ${cases.length} bad environments stopped with exit 1 and one line naming the variable`);
  });
});
