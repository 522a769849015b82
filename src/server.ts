/**
 * The process: read and validate configuration, build the service, listen, and
 * shut down gracefully. A bad setting or a store that cannot be used (a corrupt
 * database) stops the start with one line saying what is wrong. On SIGTERM (Cloud
 * Run gives 10 s) it stops taking requests, lets turns in flight finish and store
 * their result, closes the store and exits 0.
 *
 * @see https://cloud.google.com/run/docs/container-contract#instance-shutdown
 */
import closeWithGrace from 'close-with-grace';
import { ConfigError, loadConfig, LOCAL_TOKEN_FILE } from './config.ts';
import { createLogger } from './logger.ts';
import { createService } from './service.ts';
import { StoreOpenError } from './store/call-store.ts';

const startedAt = performance.now();

let config;
try {
  config = loadConfig(process.env);
} catch (error) {
  if (error instanceof ConfigError) {
    process.stderr.write(`Configuration error: ${error.message}\n`);
    process.exit(1);
  }
  throw error;
}

const log = createLogger(config.logLevel);
let service;
try {
  service = await createService(config, log);
} catch (error) {
  // A store that cannot be used (a corrupt or unopenable database): one line naming the file, like a bad setting.
  if (error instanceof StoreOpenError) {
    process.stderr.write(`Store error: ${error.message}\n`);
    process.exit(1);
  }
  throw error;
}

if (config.twilioAuthTokenSource === 'local') {
  log.warn(
    { file: `${config.dataDir}/${LOCAL_TOKEN_FILE}` },
    'TWILIO_AUTH_TOKEN is not set: checking webhook signatures with a local development token (the terminal phone, npm run call, signs with it). Set TWILIO_AUTH_TOKEN for real Twilio traffic.',
  );
}
if (service.agent.kind === 'local') {
  log.warn('KOOZIE_AGENT_URI is not set: the built-in local agent answers calls.');
}
if (!service.voice) {
  log.warn('ElevenLabs is not configured (ELEVENLABS_API_KEY, ELEVEN_VOICE_ID): callers hear the phone\u2019s own voice.');
}

const SHUTDOWN_GRACE_MS = 9_000;
closeWithGrace({ delay: SHUTDOWN_GRACE_MS }, async ({ signal, err }) => {
  if (err) log.error({ err }, 'shutting down after an error');
  else log.info({ signal, liveCalls: service.engine.liveCalls }, 'shutting down: finishing turns in flight');
  // Stop accepting connections first (in-flight requests finish), then let live turns store their result.
  const closing = service.app.close();
  await service.engine.drain(SHUTDOWN_GRACE_MS - 1_000);
  await closing;
  await service.close();
  log.info('shut down cleanly');
});

const SNAPSHOT_SWEEP_MS = 60 * 60 * 1000;
setInterval(() => {
  const before = Date.now() - config.snapshotTtlHours * 3_600_000;
  service.store
    .expireSnapshots(before)
    .then((expired) => expired > 0 && log.info({ expired }, 'expired old call snapshots'))
    .catch((error: unknown) => log.warn({ err: error }, 'snapshot expiry failed'));
}, SNAPSHOT_SWEEP_MS).unref();

await service.app.listen({ port: config.port, host: config.host });
log.info(
  {
    port: config.port,
    publicBaseUrl: config.publicBaseUrl,
    store: service.store.kind,
    agent: service.agent.kind,
    startMs: Math.round(performance.now() - startedAt),
  },
  'ready',
);
void service.warmUp();
