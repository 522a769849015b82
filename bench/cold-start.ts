/**
 * Cold start: from spawning `node src/server.ts` to its first `/healthz` 200,
 * several times, next to the floor of starting Node itself (`node -e ""` to exit).
 * Every start gets a fresh DATA_DIR, so the embedded store is created each time,
 * as on a new Cloud Run instance.
 */
import { spawn } from 'node:child_process';
import { clock, startService } from './processes.ts';

export interface ColdStart {
  readyMs: number[];
  /** Spawn to exit of an empty Node program. */
  nodeMs: number[];
}

export async function measureColdStart(runs: number, env: Record<string, string>): Promise<ColdStart> {
  const result: ColdStart = { readyMs: [], nodeMs: [] };
  for (let i = 0; i < runs; i++) {
    const started = clock();
    await new Promise<void>((resolve, reject) => {
      const child = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' });
      child.once('error', reject);
      child.once('exit', () => resolve());
    });
    result.nodeMs.push(clock() - started);
    const service = await startService(env, { pollMs: 2 });
    result.readyMs.push(service.readyMs);
    await service.close();
  }
  return result;
}
