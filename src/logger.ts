/**
 * One pino logger for the process, JSON lines that Cloud Logging reads: `severity`
 * instead of pino's numeric level, `message` as the message key. Secrets are
 * redacted by path; each call logs through `child({ callSid })`.
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
