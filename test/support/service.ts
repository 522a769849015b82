/**
 * Starts the real service in this process, on loopback, configured the way an
 * operator would (environment variables through `loadConfig`) and pointed at the
 * loopback fakes. Logs go to an in-memory sink the test can read as JSON lines.
 *
 * The public URL is a name Twilio would use (`https://voice.example.test`), not the
 * loopback address: signatures are computed over it, and the simulated Twilio maps
 * it to the real port, as a load balancer would.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { loadConfig } from '../../src/config.ts';
import { createLogger } from '../../src/logger.ts';
import { createService, type Service, type ServiceOverrides } from '../../src/service.ts';
import { SimulatedCall, type CallerOptions } from '../../src/phone/twilio-caller.ts';

export const PUBLIC_BASE_URL = 'https://voice.example.test';
export const AUTH_TOKEN = 'test-twilio-auth-token-0123456789';
export const ELEVENLABS_KEY = 'test-elevenlabs-key-abcdef';

export interface RunningService {
  service: Service;
  /** Loopback address the service listens on. */
  address: string;
  dataDir: string;
  /** Every log line, parsed. */
  logs: Array<Record<string, unknown>>;
  rawLogs: string[];
  call(options?: Partial<CallerOptions>): SimulatedCall;
  close(): Promise<void>;
}

export async function startService(
  env: Record<string, string | undefined> = {},
  overrides: ServiceOverrides & { dataDir?: string } = {},
): Promise<RunningService> {
  const dataDir = overrides.dataDir ?? mkdtempSync(join(tmpdir(), 'heyai-test-'));
  const config = loadConfig({
    PORT: '0',
    HOST: '127.0.0.1',
    PUBLIC_BASE_URL,
    TWILIO_AUTH_TOKEN: AUTH_TOKEN,
    DATA_DIR: dataDir,
    LOG_LEVEL: 'debug',
    ...env,
  });
  const rawLogs: string[] = [];
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (!line) continue;
        rawLogs.push(line);
        logs.push(JSON.parse(line) as Record<string, unknown>);
      }
      done();
    },
  });
  const service = await createService(config, createLogger(config.logLevel, sink), overrides);
  const address = await service.app.listen({ port: 0, host: '127.0.0.1' });
  return {
    service,
    address,
    dataDir,
    logs,
    rawLogs,
    call: (options = {}) =>
      new SimulatedCall({ publicBaseUrl: PUBLIC_BASE_URL, targetBaseUrl: address, authToken: AUTH_TOKEN, ...options }),
    async close() {
      // A test's clients (a browser's keep-alive sockets) must not hold the shutdown open.
      const closing = service.close();
      service.app.server.closeAllConnections();
      await closing;
      if (!overrides.dataDir) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** What the caller heard, as text: `Say` words, `Play` as [audio]. */
export function spoken(heard: SimulatedCall['heard']): string[] {
  return heard.map((h) => (h.verb === 'Say' ? h.text : h.verb === 'Play' ? '[audio]' : `[${h.verb}]`));
}
