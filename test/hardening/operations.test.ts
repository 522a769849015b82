/**
 * Operations: SIGTERM drains the turns in flight (the process as `npm start` runs
 * it), readiness follows the store (down, or its disk full), a bad configuration
 * or a damaged database stops the start with one clear line naming it, and the
 * data directory is the service user's only.
 */
import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeSync } from 'node:fs';
import { DatabaseSync } from 'node:sqlite';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PHRASES } from '../../machines/call.machine.ts';
import { newCallSid, parseTwiml, SimulatedCall } from '../../src/phone/twilio-caller.ts';
import { SqliteCallStore } from '../../src/store/sqlite-store.ts';
import { startFakeAgent, type FakeAgent } from '../fakes/agent-server.ts';
import { startServerProcess, type ServerProcess } from '../support/server-process.ts';
import { AUTH_TOKEN, PUBLIC_BASE_URL, spoken, startService } from '../support/service.ts';
import { FaultyCallStore, figure, linesWithSecrets, twilioSignature } from './support.ts';

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

/** A signed Twilio webhook as raw HTTP/1.1 bytes on a keep-alive connection. */
function rawWebhook(path: string, params: Record<string, string>): Buffer {
  const body = new URLSearchParams(params).toString();
  const head = [
    `POST ${path} HTTP/1.1`,
    'Host: 127.0.0.1',
    'Connection: keep-alive',
    'Content-Type: application/x-www-form-urlencoded',
    `Content-Length: ${Buffer.byteLength(body)}`,
    `X-Twilio-Signature: ${twilioSignature(path, params)}`,
  ];
  return Buffer.from(`${head.join('\r\n')}\r\n\r\n${body}`);
}

interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/**
 * One HTTP/1.1 connection driven by hand, so a test controls when each byte of a
 * request goes out (fetch would pool, retry and hide the connection).
 */
class RawConnection {
  readonly #socket: Socket;
  #received = Buffer.alloc(0);
  #ended = false;
  readonly closed: Promise<void>;

  private constructor(socket: Socket) {
    this.#socket = socket;
    socket.on('data', (chunk: Buffer) => (this.#received = Buffer.concat([this.#received, chunk])));
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.once('end', () => (this.#ended = true));
    socket.on('error', () => undefined);
  }

  static async open(port: number): Promise<RawConnection> {
    const socket = connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    return new RawConnection(socket);
  }

  write(bytes: Buffer): void {
    this.#socket.write(bytes);
  }

  /** The next complete response on the connection. */
  async response(timeoutMs = 10_000): Promise<RawResponse> {
    let parsed: { response: RawResponse; size: number } | undefined;
    await waitFor(() => (parsed = parseResponse(this.#received)) !== undefined || this.#ended, timeoutMs);
    if (!parsed) throw new Error(`the connection ended without a complete response: ${JSON.stringify(this.#received.toString())}`);
    this.#received = this.#received.subarray(parsed.size);
    return parsed.response;
  }

  destroy(): void {
    this.#socket.destroy();
  }
}

function parseResponse(bytes: Buffer): { response: RawResponse; size: number } | undefined {
  const headEnd = bytes.indexOf('\r\n\r\n');
  if (headEnd < 0) return undefined;
  const [statusLine = '', ...lines] = bytes.subarray(0, headEnd).toString('latin1').split('\r\n');
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  const size = headEnd + 4 + Number(headers['content-length'] ?? 0);
  if (bytes.length < size) return undefined;
  const status = Number(statusLine.split(' ')[1]);
  return { response: { status, headers, body: bytes.subarray(headEnd + 4, size).toString('utf8') }, size };
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

  it('serves a webhook that reaches an open keep-alive connection during the drain (TwiML, not a 503), then closes that connection', async () => {
    const dataDir = tempDir();
    const server = await serverProcess(dataDir, { WEBHOOK_DEADLINE_MS: '5000' });
    const first = callerFor(server);
    await first.dial();

    // A second call's webhooks come on one keep-alive connection, as a load balancer reuses it.
    const callSid = newCallSid();
    const params = { CallSid: callSid, From: '+15550100003', To: '+15550100002', CallStatus: 'in-progress' };
    const connection = await RawConnection.open(server.port);
    try {
      connection.write(rawWebhook('/voice', { ...params, CallStatus: 'ringing' }));
      const greeted = await connection.response();
      expect(greeted.status).toBe(200);
      expect(greeted.headers.connection).not.toBe('close');

      // The first call's turn is in flight when SIGTERM arrives...
      agent.setBehaviour({ kind: 'reply', firstChunkDelayMs: 1_500 });
      const asked = agent.requests.length;
      const inFlight = first.webhook('/speech-result', { SpeechResult: 'Are you closing?', Confidence: '0.9' });
      inFlight.catch(() => undefined); // awaited below; a failed assertion before that must not leave it unhandled
      await waitFor(() => agent.requests.length > asked);
      // ...and the second call's next webhook is on its way: its first bytes are in, the rest lands during the drain.
      const next = rawWebhook('/speech-result', { ...params, SpeechResult: 'Are you open tomorrow?', Confidence: '0.9' });
      connection.write(next.subarray(0, 24));
      await new Promise((resolve) => setTimeout(resolve, 150));
      server.child.kill('SIGTERM');
      await waitFor(() => server.output.some((line) => line.includes('shutting down')));
      await new Promise((resolve) => setTimeout(resolve, 100));
      connection.write(next.subarray(24));

      const answer = await connection.response();
      expect(answer.status, answer.body).toBe(200);
      expect(answer.headers['content-type']).toMatch(/^text\/xml/);
      parseTwiml(answer.body);
      expect(answer.body).toContain('Agent heard: Are you open tomorrow? (history: 0)');
      expect(answer.body).toContain('<Gather');
      expect(answer.headers.connection).toBe('close');
      await connection.closed;

      expect((await inFlight).body).toContain('Agent heard: Are you closing? (history: 0)');
      expect(await server.exited).toBe(0);
      expect(server.output.some((line) => line.includes('shut down cleanly'))).toBe(true);
      const record = await storedRecord(dataDir, callSid);
      expect(record?.turns.map((t) => t.reply)).toEqual(['Agent heard: Are you open tomorrow? (history: 0)']);
    } finally {
      connection.destroy();
      agent.setBehaviour({ kind: 'reply' });
    }
    figure('operations: a webhook arriving on a keep-alive connection during the SIGTERM drain: TwiML 200 with Connection: close, exit 0');
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

describe('readiness on a full disk', () => {
  it('answers 503 once the store cannot write (files capped by RLIMIT_FSIZE, as a full disk), while webhooks still get TwiML', { timeout: 60_000 }, async () => {
    const dataDir = tempDir();
    // `ulimit -f` caps every file the process writes (POSIX counts 512-byte blocks: 1 MiB). Node
    // ignores SIGXFSZ, so a write past the cap fails with EFBIG and SQLite reports SQLITE_FULL.
    const server = await startServerProcess(
      { PUBLIC_BASE_URL, TWILIO_AUTH_TOKEN: AUTH_TOKEN, KOOZIE_AGENT_URI: agent.url, DATA_DIR: dataDir },
      undefined,
      ['sh', '-c', 'ulimit -f 2048 && exec "$0" "$@"'],
    );
    processes.push(server);
    const ready = async () => (await fetch(`${server.url}/readyz`)).status;
    expect(await ready()).toBe(200);
    let calls = 0;
    let stored = 0;
    const statuses = new Set<number>();
    while ((await ready()) === 200 && calls < 2_000) {
      const greeted = await callerFor(server).webhook('/voice', { CallStatus: 'ringing' });
      statuses.add(greeted.status);
      if (greeted.body.includes(PHRASES.greeting)) stored += 1;
      calls += 1;
    }
    // The store worked until the disk filled up.
    expect(stored).toBeGreaterThan(10);
    expect(calls, 'readiness never failed').toBeLessThan(2_000);
    const answer = await fetch(`${server.url}/readyz`);
    expect(answer.status).toBe(503);
    expect(await answer.json()).toEqual({ status: 'store unavailable', store: 'sqlite' });
    // The webhooks that could not be stored still got TwiML (recovery), never a 5xx.
    expect([...statuses]).toEqual([200]);
    expect((await fetch(`${server.url}/healthz`)).status).toBe(200);
    figure(`operations: files capped at 1 MiB: /readyz 503 once ${calls} calls filled the store (${stored} stored); every webhook answered 200 TwiML`);
  });
});

describe('a damaged store', () => {
  function corruptStore(header: boolean): string {
    const dataDir = tempDir();
    const db = new DatabaseSync(join(dataDir, 'calls.sqlite'));
    db.exec("CREATE TABLE calls (call_sid TEXT PRIMARY KEY, revision INTEGER); INSERT INTO calls VALUES ('CA1', 1)");
    const { rootpage } = db.prepare("SELECT rootpage FROM sqlite_schema WHERE name = 'calls'").get() as { rootpage: number };
    db.close();
    const fd = openSync(join(dataDir, 'calls.sqlite'), 'r+');
    // The header (the first 100 bytes) garbled, or the calls table's root page zeroed.
    writeSync(fd, header ? Buffer.alloc(100, 0x41) : Buffer.alloc(4096), 0, header ? 100 : 4096, header ? 0 : (rootpage - 1) * 4096);
    closeSync(fd);
    return dataDir;
  }

  it('stops the start with exit code 1 and one line naming the file and what is wrong', async () => {
    for (const [header, what] of [[true, 'not a SQLite database, or its header is corrupt'], [false, 'the database is corrupt']] as const) {
      const dataDir = corruptStore(header);
      const { code, stdout, stderr } = await startWith({ DATA_DIR: dataDir, TWILIO_AUTH_TOKEN: AUTH_TOKEN });
      const file = join(dataDir, 'calls.sqlite');
      expect(code, stderr).toBe(1);
      expect(stderr.endsWith('\n') && stderr.trimEnd().split('\n'), stderr).toHaveLength(1);
      expect(stderr.startsWith(`Store error: ${file}: ${what}`), stderr).toBe(true);
      expect(stderr).toMatch(/move it aside to start with an empty store, or restore a backup\n$/);
      expect(stdout).toBe('');
    }
    figure('operations: a garbled header and a zeroed table page each stopped the start with exit 1 and one line naming the file');
  });
});

describe('the data directory', () => {
  it('is made 0700, and its local token, database, WAL and shared-memory files are 0600', async () => {
    const dataDir = join(tempDir(), 'data');
    const server = await startServerProcess({ PUBLIC_BASE_URL, KOOZIE_AGENT_URI: agent.url, DATA_DIR: dataDir });
    processes.push(server);
    const token = readFileSync(join(dataDir, 'local-twilio-auth-token'), 'utf8').trim();
    const call = new SimulatedCall({ publicBaseUrl: PUBLIC_BASE_URL, targetBaseUrl: server.url, authToken: token });
    expect((await call.dial()).heard.length).toBeGreaterThan(0);
    const mode = (name: string) => (statSync(join(dataDir, name)).mode & 0o777).toString(8);
    expect(mode('.')).toBe('700');
    for (const name of ['local-twilio-auth-token', 'calls.sqlite', 'calls.sqlite-wal', 'calls.sqlite-shm']) expect(mode(name), name).toBe('600');
    server.child.kill('SIGTERM');
    expect(await server.exited).toBe(0);
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
    ['RATE_LIMIT_UNSIGNED_PER_SECOND', { RATE_LIMIT_UNSIGNED_PER_SECOND: '0' }],
    ['RATE_LIMIT_UNSIGNED_PER_ADDRESS_PER_SECOND', { RATE_LIMIT_UNSIGNED_PER_ADDRESS_PER_SECOND: '-1' }],
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
