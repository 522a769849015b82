/**
 * `node bench/http-client.ts`: why the agent and ElevenLabs clients post through
 * `node:http` (src/http-client/http-exchange.ts) rather than `fetch`. Two loopback
 * measurements against a server in another process, each for both transports:
 *
 * - a POST like an ElevenLabs request, one at a time (2 ms apart): from the call
 *   to the answer read, p50 / p99;
 * - 200 SSE streams at once, one event every 33 ms (a word of the agent's answer),
 *   parsed with eventsource-parser and read the way the agent client reads them:
 *   CPU of this process per chunk.
 *
 *   node bench/http-client.ts [--requests 500] [--streams 200] [--chunks 60]
 *
 * Figures and how to read them: docs/performance.md ("Applied: the agent and
 * ElevenLabs over node:http").
 */
import { fork } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import { createParser } from 'eventsource-parser';
import { quantile } from './quantile.ts';

const { values: args } = parseArgs({
  options: {
    serve: { type: 'boolean', default: false },
    requests: { type: 'string', default: '500' },
    streams: { type: 'string', default: '200' },
    chunks: { type: 'string', default: '60' },
  },
});
const CHUNKS = Number(args.chunks);

if (args.serve) {
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      if (req.url !== '/sse') {
        res.writeHead(200, { 'content-type': 'audio/wav' }).end(Buffer.alloc(16_000));
        return;
      }
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      let sent = 0;
      const timer = setInterval(() => {
        res.write(`data: ${JSON.stringify({ text: `word${sent} ` })}\n\n`);
        if (++sent === CHUNKS) {
          clearInterval(timer);
          res.end('data: [DONE]\n\n');
        }
      }, 33);
    });
  });
  server.keepAliveTimeout = 60_000;
  server.listen(0, '127.0.0.1', () => process.send?.((server.address() as AddressInfo).port));
} else {
  const child = fork(new URL(import.meta.url).pathname, ['--serve', '--chunks', String(CHUNKS)]);
  const port = await new Promise<number>((resolve) => child.once('message', (m) => resolve(m as number)));
  const base = `http://127.0.0.1:${port}`;
  const agent = new http.Agent({ keepAlive: true });
  const body = JSON.stringify({ text: 'Your order ships on Tuesday.', model_id: 'eleven_flash_v2_5', previous_text: 'When does it ship?' });
  const headers = { 'content-type': 'application/json', 'xi-api-key': 'bench' };

  const postFetch = async (): Promise<void> => {
    const response = await fetch(`${base}/tts`, { method: 'POST', headers, body });
    await response.arrayBuffer();
  };
  const postHttp = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const request = http.request(`${base}/tts`, { method: 'POST', agent, headers: { ...headers, 'content-length': String(Buffer.byteLength(body)) } });
      request.on('error', reject);
      request.on('response', (response) => {
        response.resume();
        response.on('end', resolve);
        response.on('error', reject);
      });
      request.end(body);
    });

  let chunks = 0;
  const onEvent = (event: { data: string }): void => {
    if (event.data === '[DONE]') return;
    JSON.parse(event.data);
    chunks += 1;
  };
  const sseFetch = async (): Promise<void> => {
    const response = await fetch(`${base}/sse`, { method: 'POST', headers: { accept: 'text/event-stream' }, body: '{}' });
    const parser = createParser({ onEvent });
    const reader = response.body!.getReader();
    const decoder = new TextDecoder();
    async function* texts(): AsyncGenerator<string> {
      for (;;) {
        const read = await reader.read();
        if (read.done) return;
        yield decoder.decode(read.value, { stream: true });
      }
    }
    for await (const text of texts()) parser.feed(text);
  };
  const sseHttp = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const request = http.request(`${base}/sse`, { method: 'POST', agent, headers: { accept: 'text/event-stream', 'content-length': '2' } });
      request.on('error', reject);
      request.on('response', (response) => {
        response.setEncoding('utf8');
        const parser = createParser({ onEvent });
        async function* texts(): AsyncGenerator<string> {
          for await (const text of response as AsyncIterable<string>) yield text;
        }
        void (async () => {
          for await (const text of texts()) parser.feed(text);
        })().then(resolve, reject);
      });
      request.end('{}');
    });

  console.log(`POST and read the answer, one at a time, ${args.requests} requests after 200 to warm up, ms`);
  console.log('transport            p50     p99');
  for (const [name, post] of [['fetch', postFetch], ['node:http', postHttp], ['fetch', postFetch], ['node:http', postHttp]] as const) {
    for (let i = 0; i < 200; i++) await post();
    const times: number[] = [];
    for (let i = 0; i < Number(args.requests); i++) {
      const started = performance.now();
      await post();
      times.push(performance.now() - started);
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
    console.log(`${name.padEnd(16)} ${quantile(times, 0.5).toFixed(2).padStart(7)} ${quantile(times, 0.99).toFixed(2).padStart(7)}`);
  }

  console.log(`\nSSE: ${args.streams} streams at once, ${CHUNKS} chunks each, one every 33 ms; CPU of this process per chunk`);
  console.log('transport         chunks   µs/chunk');
  for (const [name, stream] of [['fetch', sseFetch], ['node:http', sseHttp], ['fetch', sseFetch], ['node:http', sseHttp]] as const) {
    await Promise.all(Array.from({ length: 50 }, stream));
    chunks = 0;
    const cpu = process.cpuUsage();
    await Promise.all(Array.from({ length: Number(args.streams) }, stream));
    const used = process.cpuUsage(cpu);
    console.log(`${name.padEnd(16)} ${String(chunks).padStart(7)} ${((used.user + used.system) / chunks).toFixed(1).padStart(10)}`);
  }
  agent.destroy();
  child.kill();
}
