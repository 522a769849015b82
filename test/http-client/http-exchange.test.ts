/**
 * The transport the agent and ElevenLabs clients share, against real loopback
 * servers: keep-alive reuse, the one retry on a reused connection the server had
 * dropped, and aborts that end a pending read at once.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { HttpClient, readBodyPrefix } from '../../src/http-client/http-exchange.ts';
import { readBody, startLoopbackServer, type LoopbackServer } from '../fakes/loopback-server.ts';

interface TestServer extends LoopbackServer {
  /** Where to post. */
  target: URL;
  /** Requests received so far. */
  requests(): number;
}

const open: Array<{ close(): Promise<void> }> = [];
afterEach(async () => {
  for (const server of open.splice(0)) await server.close();
});

/** A loopback server whose handler also learns which request of its connection this is. */
async function serve(handle: (req: IncomingMessage, res: ServerResponse, requestOnConnection: number) => void): Promise<TestServer> {
  const perSocket = new WeakMap<Socket, number>();
  let requests = 0;
  const server = await startLoopbackServer(async (req, res) => {
    const n = (perSocket.get(req.socket) ?? 0) + 1;
    perSocket.set(req.socket, n);
    requests += 1;
    await readBody(req);
    handle(req, res, n);
  });
  const state: TestServer = { ...server, target: new URL(`${server.url}/chat`), requests: () => requests };
  open.push(state);
  return state;
}

async function text(body: IncomingMessage): Promise<string> {
  body.setEncoding('utf8');
  let all = '';
  for await (const chunk of body as AsyncIterable<string>) all += chunk;
  return all;
}

describe('HttpClient', () => {
  it('posts the body with its length and reuses the connection for the next request', async () => {
    const server = await serve((req, res) => res.writeHead(200, { 'content-type': 'text/plain' }).end(`got ${req.headers['content-length']}`));
    const client = new HttpClient();
    open.push({ close: async () => client.close() });
    for (let i = 0; i < 3; i++) {
      const answer = await client.post(server.target, { 'content-type': 'application/json' }, '{"text":"héllo"}', AbortSignal.timeout(2000));
      expect(answer.status).toBe(200);
      expect(await text(answer.body)).toBe('got 17');
    }
    expect(server.connections()).toBe(1);
  });

  it('sends a request again on a new connection when the server dropped the kept-alive one it was written on', async () => {
    // The second request on any connection finds it closed without an answer, as
    // when a server's idle timeout closes it just as the request is written.
    const server = await serve((_req, res, requestOnConnection) => {
      if (requestOnConnection === 2) res.socket?.destroy();
      else res.writeHead(200).end('ok');
    });
    const client = new HttpClient();
    open.push({ close: async () => client.close() });
    expect(await text((await client.post(server.target, {}, 'one', AbortSignal.timeout(2000))).body)).toBe('ok');
    expect(await text((await client.post(server.target, {}, 'two', AbortSignal.timeout(2000))).body)).toBe('ok');
    expect(server.requests()).toBe(3);
    expect(server.connections()).toBe(2);
  });

  it('does not send again when a fresh connection fails', async () => {
    const server = await serve((_req, res) => res.socket?.destroy());
    const client = new HttpClient();
    open.push({ close: async () => client.close() });
    await expect(client.post(server.target, {}, 'one', AbortSignal.timeout(2000))).rejects.toMatchObject({ code: 'ECONNRESET' });
    expect(server.requests()).toBe(1);
  });

  it('ends a pending read of the answer with the abort reason, and closes that connection', async () => {
    const server = await serve((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write('data: {"text":"Hello"}\n\n'); // and nothing more
    });
    const client = new HttpClient();
    open.push({ close: async () => client.close() });
    const controller = new AbortController();
    const answer = await client.post(server.target, {}, '{}', controller.signal);
    const reading = text(answer.body);
    const reason = new DOMException('no complete answer within 100 ms', 'TimeoutError');
    setTimeout(() => controller.abort(reason), 50);
    await expect(reading).rejects.toBe(reason);
    // The next request cannot reuse the aborted connection.
    const next = client.post(server.target, {}, '{}', AbortSignal.timeout(2000));
    await next.then((a) => a.body.destroy());
    expect(server.connections()).toBe(2);
  });

  it('rejects at once with an already aborted signal, sending nothing', async () => {
    const server = await serve((_req, res) => res.end('ok'));
    const client = new HttpClient();
    open.push({ close: async () => client.close() });
    const reason = new Error('the caller hung up');
    await expect(client.post(server.target, {}, '{}', AbortSignal.abort(reason))).rejects.toBe(reason);
    expect(server.requests()).toBe(0);
  });

  it('reads no more of an error body than asked for', async () => {
    const server = await serve((_req, res) => {
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.write('x'.repeat(1000));
      // Keeps sending: a hostile or broken server.
      const timer = setInterval(() => res.write('y'.repeat(1000)), 5);
      res.on('close', () => clearInterval(timer));
    });
    const client = new HttpClient();
    open.push({ close: async () => client.close() });
    const answer = await client.post(server.target, {}, '{}', AbortSignal.timeout(2000));
    const prefix = await readBodyPrefix(answer.body, 200);
    expect(prefix.length).toBeGreaterThanOrEqual(200);
    expect(prefix.length).toBeLessThanOrEqual(1000);
    expect(answer.body.destroyed).toBe(true);
  });
});
