/**
 * Webhook throughput: how many signed Twilio webhooks a second the service
 * answers when nothing outside it is slow. Each client runs short calls back to
 * back, four webhooks each, every one of which commits to the embedded store:
 *
 *   /voice (greeting, audio already synthesised) → /speech-result with no words
 *   (re-prompt) → /speech-result with no words (goodbye, hang up) → /call-status.
 *
 * Only answered webhooks count: a 2xx with TwiML (`<Response>`). A refusal (429
 * from a rate limit) or any other answer is counted apart and ends that call; the
 * caller of this module fails the phase on any.
 */
import { SimulatedCall } from '../src/phone/twilio-caller.ts';
import { callerNumber } from './calls.ts';
import { AUTH_TOKEN, clock, PUBLIC_BASE_URL } from './processes.ts';

export interface WebhookThroughput {
  /** Webhooks answered with TwiML. */
  answered: number;
  /** Answered 429: refused by a rate limit. */
  refused: number;
  /** Anything else: another status, no TwiML, or no answer at all. */
  failures: string[];
  wallMs: number;
  /** Answer time of each answered webhook, ms. */
  latencyMs: number[];
}

const CYCLE: Array<{ path: string; params: Record<string, string> }> = [
  { path: '/voice', params: { CallStatus: 'ringing' } },
  { path: '/speech-result', params: {} },
  { path: '/speech-result', params: {} },
  { path: '/call-status', params: { CallStatus: 'completed', CallDuration: '4' } },
];

export async function runWebhooks(options: { serviceUrl: string; clients: number; durationMs: number; firstCallIndex: number }): Promise<WebhookThroughput> {
  const result: WebhookThroughput = { answered: 0, refused: 0, failures: [], wallMs: 0, latencyMs: [] };
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
          // /call-status answers an empty <Response/> too: TwiML all the same.
          if (answer.status >= 200 && answer.status < 300 && answer.body.includes('<Response')) {
            result.latencyMs.push(clock() - sent);
            result.answered++;
            continue;
          }
          if (answer.status === 429) result.refused++;
          else result.failures.push(`${path} answered ${answer.status}: ${answer.body.slice(0, 120)}`);
          break;
        }
      }
    }),
  );
  result.wallMs = clock() - started;
  return result;
}
