/**
 * Cold start: from spawning the service to its first `/healthz` 200, several
 * times, next to the floor of starting Node itself (`node -e ""` to exit). Every
 * start gets a fresh DATA_DIR, so the embedded store is created each time, as on a
 * new Cloud Run instance.
 *
 * Two entries: `node src/server.ts` (what `npm start` runs: Node strips the types
 * of every module as it loads it) and the production build the Docker image runs
 * (`npm run build`, compiled here into a temporary directory, started as
 * `node dist/src/server.js`). And where the time goes: each import of the start
 * path timed in a fresh process, in the order the server loads them.
 */
import { execFile, spawn } from 'node:child_process';
import { cpSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { clock, startService } from './processes.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** The start path's imports, heaviest candidates first-loaded first, as src/server.ts pulls them in. */
const START_IMPORTS = [
  'close-with-grace',
  'pino',
  'fastify',
  '@fastify/formbody',
  '@fastify/rate-limit',
  'xstate',
  'twilio/lib/webhooks/webhooks.js',
  'twilio/lib/twiml/VoiceResponse.js',
  'eventsource-parser',
  'node:sqlite',
  './machines/call.machine.ts',
  './src/config.ts',
  './src/admin/admin-routes.ts',
  './src/service.ts',
];

export interface ColdStart {
  readyMs: number[];
  /** The production build; empty when it could not be built. */
  builtReadyMs: number[];
  /** Spawn to exit of an empty Node program. */
  nodeMs: number[];
  /** Each start-path import's own time in a fresh process, ms. */
  imports: Array<{ module: string; ms: number }>;
}

export async function measureColdStart(runs: number, env: Record<string, string>): Promise<ColdStart> {
  const result: ColdStart = { readyMs: [], builtReadyMs: [], nodeMs: [], imports: [] };
  const built = await buildProduction().catch(() => undefined);
  try {
    for (let i = 0; i < runs; i++) {
      result.nodeMs.push(await nodeFloor());
      result.readyMs.push(await readyMs(env));
      if (built) result.builtReadyMs.push(await readyMs(env, join(built, 'src/server.js')));
    }
  } finally {
    if (built) rmSync(built, { recursive: true, force: true });
  }
  result.imports = await importTimes();
  return result;
}

async function readyMs(env: Record<string, string>, entry?: string): Promise<number> {
  const service = await startService(env, { pollMs: 2, ...(entry ? { entry } : {}) });
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

async function importTimes(): Promise<ColdStart['imports']> {
  const script = `
    const times = [];
    for (const module of ${JSON.stringify(START_IMPORTS)}) {
      const started = performance.now();
      await import(module);
      times.push({ module, ms: performance.now() - started });
    }
    process.stdout.write(JSON.stringify(times));`;
  const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], { cwd: ROOT });
  return JSON.parse(stdout) as ColdStart['imports'];
}
