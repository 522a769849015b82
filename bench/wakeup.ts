/**
 * What a loopback write costs the writer when the reader runs on the same machine
 * (`node bench/wakeup.ts`).
 *
 * A node:http server answers a client in another process, one request every 20 ms,
 * and times its own `res.end()` (headers and a 180-byte TwiML body, one write). The
 * client either reads the answer and waits, or also works `--client-work-ms` after
 * each answer, as the benchmark's simulated callers and fakes do. It runs at the
 * default scheduling policy, then as SCHED_BATCH (`chrt -b`), which keeps its share
 * of the CPU but never preempts another task when it wakes up.
 *
 * When a woken reader may preempt the writer, the writer's write returns only after
 * the reader has run: the reader's work is charged to the writer. That is what the
 * service's own time includes whenever a simulated caller or fake on the same cores
 * preempts it, and what `--others-policy batch` (bench/run.ts) takes out. Linux only
 * (`chrt`, util-linux).
 *
 *   node bench/wakeup.ts [--requests 600] [--client-work-ms 1]
 */
import { execFileSync, fork } from 'node:child_process';
import { Agent, createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { quantile } from './quantile.ts';

const BODY =
  '<?xml version="1.0" encoding="UTF-8"?><Response><Play>http://127.0.0.1/audio/call/CA0/t0?exp=1&amp;sig=abc</Play>' +
  '<Redirect method="POST">http://127.0.0.1/continue?played=1</Redirect></Response>';

if (process.argv[2] === 'client') {
  const [, , , port, requests, workMs] = process.argv.map(Number);
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  for (let i = 0; i < requests!; i++) {
    await new Promise<void>((resolve, reject) => {
      const req = request({ port, method: 'POST', agent }, (res) => {
        res.resume();
        res.on('end', () => {
          const until = performance.now() + workMs!;
          while (performance.now() < until); // the reader's own work on the answer
          resolve();
        });
      });
      req.on('error', reject);
      req.end('CallSid=CA0');
    });
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  process.exit(0);
}

const { values } = parseArgs({
  options: { requests: { type: 'string', default: '600' }, 'client-work-ms': { type: 'string', default: '1' } },
});
const requests = Number(values.requests);
const workMs = Number(values['client-work-ms']);

async function run(policy: 'default' | 'batch', clientWorkMs: number): Promise<number[]> {
  const ends: number[] = [];
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.setHeader('content-type', 'text/xml');
      res.setHeader('content-length', Buffer.byteLength(BODY));
      const started = performance.now();
      res.end(BODY);
      ends.push(performance.now() - started);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const client = fork(fileURLToPath(import.meta.url), ['client', String(port), String(requests), String(clientWorkMs)]);
  if (policy === 'batch') execFileSync('chrt', ['-a', '-b', '-p', '0', String(client.pid)]);
  await new Promise((resolve) => client.on('exit', resolve));
  server.close();
  return ends.slice(20); // the first few warm the JIT
}

console.log(`The server's res.end(), ${requests} answers one at a time, ms (client in another process on the same cores)`);
console.log('client policy   client work   p50     p90     p99');
for (const policy of ['default', 'batch'] as const) {
  for (const work of [0, workMs]) {
    const ends = await run(policy, work);
    console.log(`${policy.padEnd(15)} ${`${work} ms`.padEnd(13)} ${[0.5, 0.9, 0.99].map((q) => quantile(ends, q).toFixed(3).padEnd(7)).join(' ')}`);
  }
}
