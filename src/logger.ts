/**
 * One pino logger for the process, JSON lines that Cloud Logging reads: `severity`
 * instead of pino's numeric level, `message` as the message key. Secrets are
 * redacted by path; each call logs through `child({ callSid })`. A warning that
 * anyone can trigger at will (a refused request) goes through `throttledWarning`.
 *
 * @see https://cloud.google.com/logging/docs/structured-logging
 * @see https://getpino.io/#/docs/redaction
 */
import { pino, type DestinationStream, type Logger } from 'pino';

const SEVERITY: Record<string, string> = {
  trace: 'DEBUG',
  debug: 'DEBUG',
  info: 'INFO',
  warn: 'WARNING',
  error: 'ERROR',
  fatal: 'CRITICAL',
};

export const REDACTED_PATHS = [
  'twilioAuthToken',
  'adminToken',
  'apiKey',
  'elevenLabs.apiKey',
  'config.twilioAuthToken',
  'config.adminToken',
  'config.elevenLabs.apiKey',
  'req.headers.authorization',
  'req.headers["x-twilio-signature"]',
  'req.headers["xi-api-key"]',
  'headers.authorization',
  'headers["xi-api-key"]',
];

export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      messageKey: 'message',
      base: undefined,
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: {
        level: (label) => ({ severity: SEVERITY[label] ?? 'DEFAULT', level: label }),
      },
      redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
      serializers: {
        // Query strings carry audio URL signatures; log the path only.
        req: (req: { method?: string; url?: string; id?: string }) => ({
          id: req.id,
          method: req.method,
          path: req.url?.split('?')[0],
        }),
        err: pino.stdSerializers.err,
      },
    },
    destination,
  );
}

/**
 * A warning that strangers can trigger as often as they like (one per forged or
 * refused request): written at most once per `everyMs`, each line saying how many
 * were left out since the one before (`suppressed`), so a flood costs one line a
 * second, not one per request, and the count is still there.
 */
export function throttledWarning(everyMs: number, message: string) {
  let lastAt = -Infinity;
  let suppressed = 0;
  return (log: { warn(fields: object, message: string): void }, fields: Record<string, unknown>, now = Date.now()): void => {
    if (now - lastAt < everyMs) {
      suppressed += 1;
      return;
    }
    log.warn({ ...fields, suppressed }, message);
    lastAt = now;
    suppressed = 0;
  };
}
