/**
 * Runs the service as its own process (`node src/server.ts`, what `npm start`
 * runs), for tests that kill it: SIGKILL mid-call, SIGTERM drains.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { freePort } from '../../tools/free-port.ts';

/** For tests that need a free port of their own (tools/free-port.ts, shared with the benchmark). */
export { freePort };

const SERVER = fileURLToPath(new URL('../../src/server.ts', import.meta.url));

export interface ServerProcess {
  url: string;
  port: number;
  child: ChildProcess;
  output: string[];
  /** Resolves with the exit code (or signal name). */
  exited: Promise<number | string>;
}

/**
 * `wrapper`: a command that runs the server as its last arguments (a shell that
 * sets a resource limit first, say).
 */
export async function startServerProcess(env: Record<string, string>, port?: number, wrapper: string[] = []): Promise<ServerProcess> {
  const chosen = port ?? (await freePort());
  const [command, ...args] = wrapper.length ? [...wrapper, process.execPath, SERVER] : [process.execPath, SERVER];
  const child = spawn(command!, args, {
    env: { PATH: process.env.PATH ?? '', HOST: '127.0.0.1', PORT: String(chosen), LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output: string[] = [];
  // Whole lines only: a pipe delivers chunks, and a log line can straddle two.
  for (const stream of [child.stdout!, child.stderr!]) {
    createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => {
      if (line !== '') output.push(line);
    });
  }
  // 'close', not 'exit': by then the process's output has all been read.
  const exited = new Promise<number | string>((resolve) => child.once('close', (code, signal) => resolve(code ?? signal ?? -1)));
  const url = `http://127.0.0.1:${chosen}`;
  const deadline = Date.now() + 15_000;
  for (;;) {
    try {
      if ((await fetch(`${url}/healthz`)).ok) break;
    } catch {
      // not listening yet
    }
    if (child.exitCode !== null) throw new Error(`server exited early:\n${output.join('\n')}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`server not ready in 15 s:\n${output.join('\n')}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  return { url, port: chosen, child, output, exited };
}
