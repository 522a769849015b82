/**
 * The ConversationRelay phase: how soon the agent's words leave for Twilio, and
 * how soon an interrupt closes the agent's stream. In one process: the service
 * (CALL_TRANSPORT=relay, embedded store), a small SSE agent that stamps when it
 * was asked, when it sent its first chunk and when its connection was closed on
 * it, and simulated ConversationRelay callers (src/phone/relay-caller.ts). Times
 * are `performance.now()` in that one process; only answered turns count.
 *
 *   npm run bench -- --phases relay
 */
import { createServer, type Server } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { loadConfig } from '../src/config.ts';
import { createLogger } from '../src/logger.ts';
import { createService } from '../src/service.ts';
import { AUTH_TOKEN, PUBLIC_BASE_URL } from '../test/support/service.ts';
import { dialRelay } from '../test/support/relay-call.ts';
import { quantile } from './quantile.ts';

interface AgentTimes {
  askedAt: number;
  firstChunkAt?: number;
  closedEarlyAt?: number;
}

/** An SSE agent: `first` ms to its first chunk, then a chunk every `every` ms, `chunks` in all. */
async function startTimedAgent(first: number, every: number, chunks: number) {
  const times: AgentTimes[] = [];
  const histories: unknown[] = [];
  const server: Server = createServer((request, response) => {
    let body = '';
    request.on('data', (d: Buffer) => (body += d));
    request.on('end', () => {
      const entry: AgentTimes = { askedAt: performance.now() };
      times.push(entry);
      histories.push((JSON.parse(body) as { history?: unknown }).history);
      response.writeHead(200, { 'content-type': 'text/event-stream' });
      let sent = 0;
      let done = false;
      const timers: NodeJS.Timeout[] = [];
      response.on('close', () => {
        if (!done) entry.closedEarlyAt = performance.now();
        timers.forEach(clearTimeout);
      });
      for (let i = 0; i < chunks; i++) {
        timers.push(
          setTimeout(() => {
            response.write(`data: ${JSON.stringify({ text: `word${i} ` })}\n\n`);
            if (sent++ === 0) entry.firstChunkAt = performance.now();
            if (sent === chunks) {
              done = true;
              response.end();
            }
          }, first + i * every),
        );
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address() as { port: number };
  return { url: `http://127.0.0.1:${address.port}`, times, histories, close: () => new Promise((r) => server.close(r)) };
}

async function withService<T>(agentUrl: string, work: (address: string) => Promise<T>): Promise<T> {
  const dataDir = mkdtempSync(join(tmpdir(), 'heyai-relay-bench-'));
  const config = loadConfig({
    PORT: '0', HOST: '127.0.0.1', PUBLIC_BASE_URL, TWILIO_AUTH_TOKEN: AUTH_TOKEN, DATA_DIR: dataDir, LOG_LEVEL: 'warn',
    CALL_TRANSPORT: 'relay', KOOZIE_AGENT_URI: agentUrl, RATE_LIMIT_GLOBAL_PER_SECOND: '1000000', RATE_LIMIT_PER_CALLER_PER_MINUTE: '100000',
  });
  const service = await createService(config, createLogger(config.logLevel, new Writable({ write: (_c, _e, done) => done() })));
  const address = await service.app.listen({ port: 0, host: '127.0.0.1' });
  try {
    return await work(address);
  } finally {
    await service.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

const p = (values: number[]) => `${quantile(values, 0.5).toFixed(2)} / ${quantile(values, 0.99).toFixed(2)}`;

/** Turns at `calls` concurrent relay calls: prompt → first token, the agent's own time, and the service's share after the agent's first chunk. */
async function forwarding(calls: number, turns: number) {
  const agent = await startTimedAgent(300, 25, 12);
  const toFirstToken: number[] = [];
  const serviceShare: number[] = [];
  try {
    await withService(agent.url, async (address) => {
      await Promise.all(
        Array.from({ length: calls }, async (_, c) => {
          await new Promise((r) => setTimeout(r, (c * 1_000) / calls));
          const call = await dialRelay(address);
          for (let t = 0; t < turns; t++) {
            const before = agent.times.length;
            const promptAt = performance.now();
            let firstTokenAt: number | undefined;
            call.session.prompt(`caller ${c} turn ${t}`);
            const answer = await call.session.nextAnswer();
            firstTokenAt = promptAt + answer.firstTokenMs;
            if (answer.ending !== 'last') continue;
            const mine = agent.times.slice(before).find((x) => x.firstChunkAt !== undefined && x.firstChunkAt >= promptAt);
            toFirstToken.push(firstTokenAt - promptAt);
            if (mine?.firstChunkAt !== undefined) serviceShare.push(firstTokenAt - mine.firstChunkAt);
            await new Promise((r) => setTimeout(r, 200));
          }
          await call.session.hangUp();
        }),
      );
    });
  } finally {
    await agent.close();
  }
  return { calls, turns: toFirstToken.length, toFirstToken, serviceShare };
}

/** Interrupts during a long answer: interrupt sent → the agent's connection closed; the next history holds only what was heard. */
async function interrupts(count: number) {
  const agent = await startTimedAgent(50, 100, 60);
  const closeMs: number[] = [];
  let untruthful = 0;
  try {
    await withService(agent.url, async (address) => {
      for (let i = 0; i < count; i++) {
        const call = await dialRelay(address);
        call.session.prompt('Tell me everything.');
        const heard = await call.session.answerSoFar(6);
        const entry = agent.times.at(-1)!;
        const sentAt = performance.now();
        call.session.interrupt(heard, 900);
        await call.session.nextAnswer();
        for (let w = 0; w < 200 && entry.closedEarlyAt === undefined; w++) await new Promise((r) => setTimeout(r, 1));
        if (entry.closedEarlyAt !== undefined) closeMs.push(entry.closedEarlyAt - sentAt);
        call.session.prompt('And then?');
        await call.session.nextAnswer();
        const history = agent.histories.at(-1) as Array<{ role: string; content: string }>;
        if (history.at(-1)?.content !== heard.trim() && history.at(-1)?.content !== heard) untruthful++;
        await call.session.hangUp();
      }
    });
  } finally {
    await agent.close();
  }
  return { interrupts: count, closed: closeMs.length, closeMs, untruthful };
}

export async function relayPhase() {
  const results = [await forwarding(50, 4), await forwarding(200, 3)];
  const cut = await interrupts(30);
  console.log('\nConversationRelay (ms, p50 / p99; agent: 300 ms to its first chunk, then a chunk every 25 ms)');
  for (const r of results) {
    const target = r.calls <= 50 ? 5 : 10;
    console.log(
      `  ${r.calls} calls, ${r.turns} turns answered: prompt → first text token ${p(r.toFirstToken)}; ` +
        `after the agent's first chunk ${p(r.serviceShare)} (target p99 ≤ ${target} ms)`,
    );
  }
  console.log(
    `  interrupt → agent's connection closed: ${p(cut.closeMs)} over ${cut.closed}/${cut.interrupts} (target ≤ 50 ms); ` +
      `next history not what was heard: ${cut.untruthful}`,
  );
  return {
    forwarding: results.map((r) => ({ calls: r.calls, turns: r.turns, toFirstTokenMs: r.toFirstToken, afterAgentChunkMs: r.serviceShare })),
    interrupts: cut,
  };
}
