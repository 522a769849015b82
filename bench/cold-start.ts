/**
 * Cold start: from spawning the service to its first `/healthz` 200, several
 * times, next to the floor of starting Node itself (`node -e ""` to exit). Every
 * start gets a fresh DATA_DIR, so the embedded store is created each time, as on a
 * new Cloud Run instance.
 *
 * Two entries: `node src/server.ts` (what `npm start` runs: Node strips the types
 * of every module as it loads it) and the production build the Docker image runs
 * (`npm run build`, compiled here into a temporary directory, started as
 * `node dist/src/server.js`).
 */
import { execFile, spawn } from 'node:child_process';
import { cpSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { clock, startService } from './processes.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

export interface ColdStart {
  readyMs: number[];
  /** The production build; empty when it could not be built (`buildError` says why). */
  builtReadyMs: number[];
  buildError?: string;
  /** Spawn to exit of an empty Node program. */
  nodeMs: number[];
}

export async function measureColdStart(runs: number, env: Record<string, string>): Promise<ColdStart> {
  const result: ColdStart = { readyMs: [], builtReadyMs: [], nodeMs: [] };
  const built = await buildProduction().catch((error: unknown) => {
    result.buildError = error instanceof Error ? error.message : String(error);
    return undefined;
  });
  try {
    for (let i = 0; i < runs; i++) {
      result.nodeMs.push(await nodeFloor());
      result.readyMs.push(await readyMs(env, join(ROOT, 'src/server.ts')));
      if (built) result.builtReadyMs.push(await readyMs(env, join(built, 'src/server.js')));
    }
  } finally {
    if (built) rmSync(built, { recursive: true, force: true });
  }
  return result;
}

async function readyMs(env: Record<string, string>, entry: string): Promise<number> {
  const service = await startService(env, { pollMs: 2, entry });
  await service.close();
  return service.readyMs;
}

async function nodeFloor(): Promise<number> {
  const started = clock();
  await new Promise<void>((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' });
    child.once('error', reject);
    child.once('exit', () => resolve());
  });
  return clock() - started;
}

/** `npm run build` into a temporary directory laid out like the image (dist/, node_modules, the diagram). */
async function buildProduction(): Promise<string> {
  const out = mkdtempSync(join(tmpdir(), 'heyai-dist-'));
  await promisify(execFile)(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', join(ROOT, 'tsconfig.build.json'), '--outDir', out], { cwd: ROOT });
  symlinkSync(join(ROOT, 'node_modules'), join(out, 'node_modules'));
  cpSync(join(ROOT, 'package.json'), join(out, 'package.json'));
  cpSync(join(ROOT, 'docs/diagram'), join(out, 'docs/diagram'), { recursive: true });
  return out;
}
