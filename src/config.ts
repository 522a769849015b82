/**
 * Configuration, read once from the environment at start and validated. Nothing
 * else in the service reads `process.env`. A bad value stops the start with one
 * line naming the variable (`ConfigError`).
 *
 * Hand-written rather than a JSON-schema validator because the rules cross
 * variables (production needs a Twilio token and an https public URL; ElevenLabs
 * needs both key and voice) and the messages must name the variable plainly.
 */
import { randomBytes } from 'node:crypto';
import { accessSync, constants, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { DEFAULT_OUTPUT_FORMAT, PLAYABLE_OUTPUT_FORMATS } from './speech/elevenlabs.ts';

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  readonly variable: string;
  constructor(variable: string, message: string) {
    super(`${variable}: ${message}`);
    this.variable = variable;
  }
}

export interface ElevenLabsConfig {
  apiKey: string;
  voiceId: string;
  baseUrl: string;
  modelId: string;
  outputFormat: string;
  /** Syntheses running at once, at most, in this process. */
  maxConcurrency: number;
  /** Longest a piece of audio may take from when it is asked, its wait for a free slot included. */
  deadlineMs: number;
}

/** How callers are connected (CALL_TRANSPORT): Twilio's `<Gather>` webhooks, or ConversationRelay over a WebSocket. */
export interface TransportConfig {
  kind: 'gather' | 'relay';
  /** ConversationRelay's speech settings (`<ConversationRelay>` attributes). */
  relay: {
    language: string;
    ttsProvider?: 'ElevenLabs' | 'Google' | 'Amazon';
    voice?: string;
    interruptible: 'any' | 'speech' | 'dtmf' | 'none';
  };
}

export interface Config {
  nodeEnv: string;
  transport: TransportConfig;
  port: number;
  host: string;
  /** Where Twilio reaches the service; signatures are computed over it. No trailing slash. */
  publicBaseUrl: string;
  twilioAuthToken: string;
  /** `env` when TWILIO_AUTH_TOKEN is set, `local` when the service made its own for development. */
  twilioAuthTokenSource: 'env' | 'local';
  agentUri: string | undefined;
  agentTimeoutMs: number;
  /** How long the agent may be silent before its first text (keep-alives restart it); at most agentTimeoutMs. */
  agentFirstTextTimeoutMs: number;
  /** `full`: message, history, callSid, session_id; `minimal`: `{"message"}` only (docs/agent-contract.md). */
  agentRequest: 'full' | 'minimal';
  elevenLabs: ElevenLabsConfig | undefined;
  /** Voice and language of `<Say>` (the phone's voice); Twilio's account defaults when unset. */
  sayVoice: string | undefined;
  sayLanguage: string | undefined;
  dataDir: string;
  callStore: 'sqlite' | 'firestore';
  gcpProjectId: string | undefined;
  logLevel: string;
  adminToken: string | undefined;
  /** Turns a call may have before the caller hears the closing line (what a call keeps stays bounded). */
  maxTurns: number;
  /** How long a webhook waits for the machine before it puts the caller on hold. */
  webhookDeadlineMs: number;
  /** How long a webhook may take in all before the caller hears "one moment" and is redirected (Twilio gives up at 15 s). */
  webhookAnswerBudgetMs: number;
  audioUrlTtlSec: number;
  snapshotTtlHours: number;
  /**
   * Signed webhooks per caller number per minute and per instance per second;
   * requests without a Twilio signature per instance and per client address per
   * second; 429 beyond. Generous: a call makes a few webhooks a minute.
   */
  rateLimits: { perCallerPerMinute: number; signedPerSecond: number; unsignedPerSecond: number; unsignedPerAddressPerSecond: number };
}

type Env = Record<string, string | undefined>;

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
export const LOCAL_TOKEN_FILE = 'local-twilio-auth-token';
/** DATA_DIR, when the service makes it: its user's only. */
export const DATA_DIR_MODE = 0o700;

export function loadConfig(env: Env): Config {
  const nodeEnv = env.NODE_ENV ?? 'development';
  const production = nodeEnv === 'production';
  const port = integer(env, 'PORT', 8080, 0, 65535);
  const dataDir = resolve(text(env, 'DATA_DIR') ?? './data');

  const publicBaseUrl = url(env, 'PUBLIC_BASE_URL', `http://localhost:${port}`, production);
  if (production && text(env, 'PUBLIC_BASE_URL') === undefined) {
    throw new ConfigError('PUBLIC_BASE_URL', 'is required when NODE_ENV=production (the https URL Twilio calls)');
  }

  let twilioAuthToken = text(env, 'TWILIO_AUTH_TOKEN');
  let twilioAuthTokenSource: Config['twilioAuthTokenSource'] = 'env';
  if (twilioAuthToken === undefined) {
    if (production) throw new ConfigError('TWILIO_AUTH_TOKEN', 'is required when NODE_ENV=production');
    usableDataDir(dataDir);
    twilioAuthToken = localAuthToken(dataDir);
    twilioAuthTokenSource = 'local';
  }

  const apiKey = text(env, 'ELEVENLABS_API_KEY');
  const voiceId = text(env, 'ELEVEN_VOICE_ID');
  if ((apiKey === undefined) !== (voiceId === undefined)) {
    const missing = apiKey === undefined ? 'ELEVENLABS_API_KEY' : 'ELEVEN_VOICE_ID';
    throw new ConfigError(missing, 'is required when the other ElevenLabs setting is set (set both, or neither to use the phone\u2019s own voice)');
  }
  let elevenLabs: ElevenLabsConfig | undefined;
  if (apiKey && voiceId) {
    const modelId = text(env, 'ELEVEN_MODEL_ID') ?? 'eleven_flash_v2_5';
    elevenLabs = {
      apiKey,
      voiceId,
      baseUrl: url(env, 'ELEVENLABS_BASE_URL', 'https://api.elevenlabs.io', false),
      modelId,
      outputFormat: oneOf(env, 'ELEVEN_OUTPUT_FORMAT', PLAYABLE_OUTPUT_FORMATS, DEFAULT_OUTPUT_FORMAT),
      maxConcurrency: integer(env, 'ELEVENLABS_MAX_CONCURRENCY', starterPlanConcurrency(modelId), 1, 1_000),
      deadlineMs: integer(env, 'ELEVENLABS_DEADLINE_MS', 2_500, 500, 12_000),
    };
  }
  const sayVoice = matching(env, 'SAY_VOICE', SAY_VOICE, 'man, woman, alice, Polly.<Name>[-Neural|-Generative] or Google.<locale>-<family>-<variant>');
  const sayLanguage = matching(env, 'SAY_LANGUAGE', SAY_LANGUAGE, 'a language tag such as en-US');
  const googleLocale = sayVoice?.startsWith('Google.') ? sayVoice.slice('Google.'.length).split('-', 2).join('-') : undefined;
  if (googleLocale && sayLanguage && googleLocale.toLowerCase() !== sayLanguage.toLowerCase()) {
    throw new ConfigError('SAY_LANGUAGE', `must be the language of SAY_VOICE ${sayVoice} (${googleLocale}), got "${sayLanguage}"`);
  }

  const callStore = oneOf(env, 'CALL_STORE', ['sqlite', 'firestore'], 'sqlite');
  const gcpProjectId = text(env, 'GCP_PROJECT_ID');
  if (callStore === 'firestore' && gcpProjectId === undefined) {
    throw new ConfigError('GCP_PROJECT_ID', 'is required when CALL_STORE=firestore');
  }
  if (callStore === 'sqlite') usableDataDir(dataDir);
  const adminToken = text(env, 'ADMIN_TOKEN');
  if (adminToken !== undefined && adminToken.length < 16) {
    throw new ConfigError('ADMIN_TOKEN', 'must be at least 16 characters');
  }

  const webhookDeadlineMs = integer(env, 'WEBHOOK_DEADLINE_MS', 3_000, 100, 12_000);
  const webhookAnswerBudgetMs = integer(env, 'WEBHOOK_ANSWER_BUDGET_MS', 10_000, 1_000, 14_000);
  if (webhookAnswerBudgetMs < webhookDeadlineMs + 1_000) {
    throw new ConfigError('WEBHOOK_ANSWER_BUDGET_MS', `must be at least WEBHOOK_DEADLINE_MS + 1000 (${webhookDeadlineMs + 1_000}), got ${webhookAnswerBudgetMs}`);
  }

  const agentTimeoutMs = integer(env, 'AGENT_TIMEOUT_MS', 20_000, 1_000, 120_000);
  // Unset, it follows a shorter AGENT_TIMEOUT_MS down rather than stop the start.
  const agentFirstTextTimeoutMs = integer(env, 'AGENT_FIRST_TEXT_TIMEOUT_MS', Math.min(15_000, agentTimeoutMs), 1_000, 120_000);
  if (agentFirstTextTimeoutMs > agentTimeoutMs) {
    throw new ConfigError('AGENT_FIRST_TEXT_TIMEOUT_MS', `must be at most AGENT_TIMEOUT_MS (${agentTimeoutMs}), got ${agentFirstTextTimeoutMs}`);
  }

  return {
    nodeEnv,
    transport: transportOf(env),
    port,
    host: text(env, 'HOST') ?? '0.0.0.0',
    publicBaseUrl,
    twilioAuthToken,
    twilioAuthTokenSource,
    agentUri: text(env, 'KOOZIE_AGENT_URI') === undefined ? undefined : url(env, 'KOOZIE_AGENT_URI', '', false),
    agentTimeoutMs,
    agentFirstTextTimeoutMs,
    agentRequest: oneOf(env, 'AGENT_REQUEST', ['full', 'minimal'], 'full'),
    elevenLabs,
    sayVoice,
    sayLanguage,
    dataDir,
    callStore,
    gcpProjectId,
    logLevel: oneOf(env, 'LOG_LEVEL', LOG_LEVELS, 'info'),
    adminToken,
    maxTurns: integer(env, 'CALL_MAX_TURNS', 150, 1, 1_000),
    webhookDeadlineMs,
    webhookAnswerBudgetMs,
    audioUrlTtlSec: integer(env, 'AUDIO_URL_TTL_SECONDS', 600, 30, 86_400),
    snapshotTtlHours: integer(env, 'SNAPSHOT_TTL_HOURS', 24, 1, 24 * 365),
    rateLimits: {
      perCallerPerMinute: integer(env, 'RATE_LIMIT_PER_CALLER_PER_MINUTE', 300, 1, 1_000_000),
      signedPerSecond: integer(env, 'RATE_LIMIT_GLOBAL_PER_SECOND', 2_000, 1, 1_000_000),
      unsignedPerSecond: integer(env, 'RATE_LIMIT_UNSIGNED_PER_SECOND', 100, 1, 1_000_000),
      unsignedPerAddressPerSecond: integer(env, 'RATE_LIMIT_UNSIGNED_PER_ADDRESS_PER_SECOND', 10, 1, 1_000_000),
    },
  };
}

/**
 * CALL_TRANSPORT and the relay's speech settings. ElevenLabs voices on the relay
 * need the Twilio account enabled for them; the voice is a provider's voice name or id.
 * @see https://www.twilio.com/docs/voice/twiml/connect/conversationrelay#attributes
 */
function transportOf(env: Env): TransportConfig {
  const kind = oneOf(env, 'CALL_TRANSPORT', ['gather', 'relay'], 'gather');
  const language = text(env, 'RELAY_LANGUAGE') ?? 'en-US';
  if (!/^[a-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}$/.test(language)) throw new ConfigError('RELAY_LANGUAGE', `must be a BCP-47 language tag such as en-US, got ${JSON.stringify(language)}`);
  const relay: TransportConfig['relay'] = {
    language,
    interruptible: oneOf(env, 'RELAY_INTERRUPTIBLE', ['any', 'speech', 'dtmf', 'none'], 'any'),
  };
  if (text(env, 'RELAY_TTS_PROVIDER') !== undefined) relay.ttsProvider = oneOf(env, 'RELAY_TTS_PROVIDER', ['ElevenLabs', 'Google', 'Amazon'] as const, 'Google');
  const voice = text(env, 'RELAY_VOICE');
  if (voice !== undefined) {
    if (!/^[\w.:+-]{1,100}$/.test(voice)) throw new ConfigError('RELAY_VOICE', 'must be a voice name or id (letters, digits, . : + - _; at most 100)');
    relay.voice = voice;
  }
  return { kind, relay };
}

/**
 * ElevenLabs' concurrency limit on the smallest paid plan (Starter) for the model:
 * 6 requests at once with the Flash and Turbo models, 3 with the others
 * (Multilingual v2). Plans above allow more; set ELEVENLABS_MAX_CONCURRENCY to yours.
 *
 * @see elevenlabs/elevenlabs-docs fern/docs/pages/models.mdx ("Concurrency and priority")
 */
function starterPlanConcurrency(modelId: string): number {
  return /^eleven_(?:flash|turbo)_/.test(modelId) ? 6 : 3;
}

/**
 * `<Say>` voices in the forms Twilio documents: `man`, `woman`, `alice`, Amazon
 * Polly's `Polly.<Name>` (optionally `-Neural` or `-Generative`) and Google's
 * `Google.<locale>-<family>-<variant>` (`Google.en-US-Neural2-F`,
 * `Google.en-US-Chirp3-HD-Aoede`); languages as Twilio writes them (`en-US`,
 * `cmn-CN`, `arb`, `en-GB-WLS`). The same forms as the `SayVoice` and `SayLanguage`
 * lists of Twilio's own library (twilio/lib/twiml/VoiceResponse.d.ts), which the
 * test checks every entry of.
 *
 * @see https://www.twilio.com/docs/voice/twiml/say/text-speech
 */
const SAY_VOICE = /^(?:man|woman|alice|Polly\.\p{L}+(?:-Neural|-Generative)?|Google\.[a-z]{2,3}-[A-Za-z]{2}(?:-[A-Za-z0-9]+){2,3})$/u;
const SAY_LANGUAGE = /^[a-z]{2,3}(?:-[A-Z]{2}(?:-[A-Z]{3})?)?$/;

function text(env: Env, name: string): string | undefined {
  const value = env[name]?.trim();
  return value === undefined || value === '' ? undefined : value;
}

function integer(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = text(env, name);
  if (raw === undefined) return fallback;
  if (!/^\d+$/.test(raw)) throw new ConfigError(name, `must be a whole number, got "${raw}"`);
  const value = Number(raw);
  if (value < min || value > max) throw new ConfigError(name, `must be between ${min} and ${max}, got ${value}`);
  return value;
}

function oneOf<T extends string>(env: Env, name: string, allowed: readonly T[], fallback: T): T {
  const raw = text(env, name);
  if (raw === undefined) return fallback;
  if (!(allowed as readonly string[]).includes(raw)) {
    throw new ConfigError(name, `must be one of ${allowed.join(', ')}, got "${raw}"`);
  }
  return raw as T;
}

function matching(env: Env, name: string, pattern: RegExp, expected: string): string | undefined {
  const raw = text(env, name);
  if (raw !== undefined && !pattern.test(raw)) throw new ConfigError(name, `must be ${expected}, got "${raw}"`);
  return raw;
}

function url(env: Env, name: string, fallback: string, httpsOnly: boolean): string {
  const raw = text(env, name) ?? fallback;
  let parsed: URL;
  try {
    parsed = new URL(raw);
  } catch {
    throw new ConfigError(name, `must be an absolute URL, got "${raw}"`);
  }
  if (parsed.protocol !== 'https:' && (httpsOnly || parsed.protocol !== 'http:')) {
    throw new ConfigError(name, httpsOnly ? 'must be an https URL when NODE_ENV=production' : 'must be an http or https URL');
  }
  if (parsed.search || parsed.hash) throw new ConfigError(name, 'must not have a query or fragment');
  return parsed.toString().replace(/\/+$/, '');
}

/**
 * DATA_DIR holds the embedded store (and the local token): one that cannot be
 * written stops the start here, in one line. Made for the service's user only
 * (0700); an existing directory keeps its mode, its files are 0600 each.
 */
function usableDataDir(dataDir: string): void {
  try {
    mkdirSync(dataDir, { recursive: true, mode: DATA_DIR_MODE });
    accessSync(dataDir, constants.W_OK);
  } catch (error) {
    throw new ConfigError('DATA_DIR', `must be a directory the service can write, got "${dataDir}" (${(error as NodeJS.ErrnoException).code ?? 'unusable'})`);
  }
}

/**
 * In development without TWILIO_AUTH_TOKEN, the service signs-checks with a token
 * of its own, kept in DATA_DIR so the terminal phone (`npm run call`) can sign
 * with the same one. Signature checks are never switched off.
 */
export function localAuthToken(dataDir: string): string {
  const file = join(dataDir, LOCAL_TOKEN_FILE);
  try {
    return readFileSync(file, 'utf8').trim();
  } catch {
    mkdirSync(dataDir, { recursive: true, mode: DATA_DIR_MODE });
    const token = randomBytes(24).toString('hex');
    writeFileSync(file, `${token}\n`, { mode: 0o600, flag: 'wx' });
    return readFileSync(file, 'utf8').trim();
  }
}
