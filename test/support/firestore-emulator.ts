/**
 * Google's Cloud Firestore emulator as a child process, for tests that need the
 * real Firestore client talking to a real server on loopback.
 *
 * The launcher is a bash script that starts `java` as its child and does not
 * forward signals, so the emulator is spawned in its own process group
 * (`detached: true`) and stopped by signalling the whole group; an exit/signal
 * fallback does the same if a test run dies before `stop()`.
 *
 * @see https://cloud.google.com/firestore/docs/emulator
 * @see https://firebase.google.com/docs/emulator-suite/connect_firestore#clear_your_database_between_tests
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createConnection } from 'node:net';
import { freePort } from '../../tools/free-port.ts';

export const FIRESTORE_EMULATOR_BIN =
  '/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator';

/** `demo-` project ids are the emulator-only convention: they never reach a real project. */
const PROJECT_ID = 'demo-heyai';
const READY_LINE = 'Dev App Server is now running';
const START_TIMEOUT_MS = 30_000;
/** Starts tried on fresh ports when the chosen one is taken before the emulator binds it. */
const START_ATTEMPTS = 3;
const BIND_FAILURE = 'java.net.BindException';
const STOP_GRACE_MS = 2_000;
/** Enough of the emulator's output to explain a failed start. */
const OUTPUT_KEPT = 16_000;

export interface FirestoreEmulator {
  /** `127.0.0.1:PORT`, for the client's `host` setting with `ssl: false`. */
  host: string;
  projectId: string;
  /** Deletes every document of the project. */
  clear(): Promise<void>;
  /** Stops the emulator and its java child. */
  stop(): Promise<void>;
}

export function firestoreEmulatorAvailable(): boolean {
  return existsSync(FIRESTORE_EMULATOR_BIN);
}

export async function startFirestoreEmulator(): Promise<FirestoreEmulator> {
  if (!firestoreEmulatorAvailable()) {
    throw new Error(
      `Firestore emulator not found at ${FIRESTORE_EMULATOR_BIN} ` +
        '(install the google-cloud-cli-firestore-emulator package, or `gcloud components install cloud-firestore-emulator`)',
    );
  }
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOn(await freePort());
    } catch (error) {
      // The port was free when chosen but taken before the emulator bound it.
      if (!(error instanceof PortTaken) || attempt >= START_ATTEMPTS) throw error;
    }
  }
}

/** The emulator failed to bind its port; another one may do. */
class PortTaken extends Error {}

async function startOn(port: number): Promise<FirestoreEmulator> {
  const host = `127.0.0.1:${port}`;
  const child = spawn(FIRESTORE_EMULATOR_BIN, ['start', '--host=127.0.0.1', `--port=${port}`], {
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const pid = child.pid;
  if (pid === undefined) throw new Error(`Firestore emulator did not start: ${FIRESTORE_EMULATOR_BIN}`);

  const killGroupNow = (): void => signalGroup(pid, 'SIGKILL');
  const onSignal = (signal: NodeJS.Signals): void => {
    killGroupNow();
    removeFallbacks();
    // Keep the default behaviour (terminate) unless someone else handles the signal.
    if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
  };
  const removeFallbacks = (): void => {
    process.off('exit', killGroupNow);
    for (const signal of FALLBACK_SIGNALS) process.off(signal, onSignal);
  };
  process.on('exit', killGroupNow);
  for (const signal of FALLBACK_SIGNALS) process.on(signal, onSignal);

  let output = '';
  let exited: string | undefined;
  const exit = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exited = signal ?? `code ${code}`;
      resolve();
    });
  });
  const ready = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`Firestore emulator not ready after ${START_TIMEOUT_MS} ms; output:\n${output}`)),
      START_TIMEOUT_MS,
    );
    const onOutput = (chunk: Buffer): void => {
      output = (output + chunk.toString('utf8')).slice(-OUTPUT_KEPT);
      if (output.includes(READY_LINE)) {
        clearTimeout(timer);
        resolve();
      }
    };
    // Keep draining both pipes for the emulator's whole life, or it blocks on a full pipe.
    child.stdout.on('data', onOutput);
    child.stderr.on('data', onOutput);
    void exit.then(() => {
      clearTimeout(timer);
      const message = `Firestore emulator exited (${exited}) before it was ready; output:\n${output}`;
      reject(output.includes(BIND_FAILURE) ? new PortTaken(message) : new Error(message));
    });
  });

  const stop = async (): Promise<void> => {
    removeFallbacks();
    signalGroup(pid, 'SIGTERM');
    const deadline = Date.now() + STOP_GRACE_MS;
    while (groupAlive(pid) && Date.now() < deadline) await sleep(50);
    if (groupAlive(pid)) signalGroup(pid, 'SIGKILL');
    while (groupAlive(pid)) await sleep(20);
    await exit;
  };

  try {
    await ready;
    await acceptsConnections(port);
  } catch (error) {
    await stop();
    throw error;
  }

  return {
    host,
    projectId: PROJECT_ID,
    async clear() {
      const url = `http://${host}/emulator/v1/projects/${PROJECT_ID}/databases/(default)/documents`;
      const response = await fetch(url, { method: 'DELETE' });
      if (!response.ok) throw new Error(`Clearing the Firestore emulator failed: ${response.status} ${await response.text()}`);
    },
    stop,
  };
}

const FALLBACK_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
  }
}

function groupAlive(pid: number): boolean {
  try {
    process.kill(-pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The ready line can precede the listening socket by a moment; a TCP connect settles it. */
async function acceptsConnections(port: number): Promise<void> {
  const deadline = Date.now() + 5_000;
  for (;;) {
    const connected = await new Promise<boolean>((resolve) => {
      const socket = createConnection({ host: '127.0.0.1', port }, () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (connected) return;
    if (Date.now() > deadline) throw new Error(`Firestore emulator on port ${port} refuses connections`);
    await sleep(50);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
