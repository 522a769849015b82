/**
 * Webhook throughput: how many signed Twilio webhooks per second the service
 * answers when nothing outside it is slow. Each client runs short calls back to
 * back, four webhooks each, every one of which commits to the embedded store:
 *
 *   /voice (greeting, audio already synthesised) → /speech-result with no words
 *   (re-prompt) → /speech-result with no words (goodbye, hang up) → /call-status.
 *
 * No audio is fetched: only webhooks are counted.
 */
import { SimulatedCall } from '../src/phone/twilio-caller.ts';
import { callerNumber } from './calls.ts';
import { AUTH_TOKEN, clock, PUBLIC_BASE_URL } from './processes.ts';

export interface WebhookThroughput {
  webhooks: number;
  wallMs: number;
  latencyMs: number[];
  failures: string[];
}

const CYCLE: Array<{ path: string; params: Record<string, string> }> = [
  { path: '/voice', params: { CallStatus: 'ringing' } },
  { path: '/speech-result', params: {} },
  { path: '/speech-result', params: {} },
  { path: '/call-status', params: { CallStatus: 'completed', CallDuration: '4' } },
];

export async function runWebhooks(options: { serviceUrl: string; clients: number; durationMs: number; firstCallIndex: number }): Promise<WebhookThroughput> {
  const result: WebhookThroughput = { webhooks: 0, wallMs: 0, latencyMs: [], failures: [] };
  const started = clock();
  const until = started + options.durationMs;
  let next = options.firstCallIndex;
  await Promise.all(
    Array.from({ length: options.clients }, async () => {
      while (clock() < until) {
        const call = new SimulatedCall({ publicBaseUrl: PUBLIC_BASE_URL, targetBaseUrl: options.serviceUrl, authToken: AUTH_TOKEN, from: callerNumber(next++) });
        for (const { path, params } of CYCLE) {
          const sent = clock();
          const answer = await call.webhook(path, params).catch((error: unknown) => ({ status: 0, body: String(error) }));
          if (answer.status !== 200) {
            result.failures.push(`${path} answered ${answer.status}: ${answer.body.slice(0, 120)}`);
            break;
          }
          result.latencyMs.push(clock() - sent);
          result.webhooks++;
        }
      }
    }),
  );
  result.wallMs = clock() - started;
  return result;
}
