import { mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, LOCAL_TOKEN_FILE } from '../src/config.ts';

const dataDir = () => mkdtempSync(join(tmpdir(), 'heyai-config-'));

function errorOf(env: Record<string, string>): ConfigError {
  try {
    loadConfig(env);
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
  throw new Error('expected a configuration error');
}

describe('configuration', () => {
  it('runs out of the box: port 8080, embedded store, local agent, a local signing token saved for the terminal phone', () => {
    const dir = dataDir();
    const config = loadConfig({ DATA_DIR: dir });
    expect(config).toMatchObject({
      port: 8080,
      publicBaseUrl: 'http://localhost:8080',
      callStore: 'sqlite',
      agentUri: undefined,
      elevenLabs: undefined,
      twilioAuthTokenSource: 'local',
      agentTimeoutMs: 20_000,
      agentFirstTextTimeoutMs: 15_000,
      agentRequest: 'full',
    });
    expect(config.twilioAuthToken).toMatch(/^[0-9a-f]{48}$/);
    expect(readFileSync(join(dir, LOCAL_TOKEN_FILE), 'utf8').trim()).toBe(config.twilioAuthToken);
    // The same token on the next start, so a running terminal phone keeps working.
    expect(loadConfig({ DATA_DIR: dir }).twilioAuthToken).toBe(config.twilioAuthToken);
  });

  it('connects callers over <Gather> by default, and over ConversationRelay with its speech settings when asked', () => {
    expect(loadConfig({ DATA_DIR: dataDir() })).toMatchObject({ transport: { kind: 'gather', relay: { language: 'en-US', interruptible: 'any' } }, maxTurns: 150 });
    const relay = loadConfig({
      DATA_DIR: dataDir(),
      CALL_TRANSPORT: 'relay',
      RELAY_LANGUAGE: 'es-ES',
      RELAY_TTS_PROVIDER: 'ElevenLabs',
      RELAY_VOICE: 'UgBBYS2sOqTuMpoF3BR0',
      RELAY_INTERRUPTIBLE: 'speech',
      CALL_MAX_TURNS: '40',
    });
    expect(relay.transport).toEqual({ kind: 'relay', relay: { language: 'es-ES', ttsProvider: 'ElevenLabs', voice: 'UgBBYS2sOqTuMpoF3BR0', interruptible: 'speech' } });
    expect(relay.maxTurns).toBe(40);
  });

  it('refuses to start in production without a Twilio token or with a plain-http public URL', () => {
    expect(errorOf({ NODE_ENV: 'production', PUBLIC_BASE_URL: 'https://x.example' }).variable).toBe('TWILIO_AUTH_TOKEN');
    expect(errorOf({ NODE_ENV: 'production', TWILIO_AUTH_TOKEN: 't', PUBLIC_BASE_URL: 'http://x.example' }).variable).toBe('PUBLIC_BASE_URL');
    expect(errorOf({ NODE_ENV: 'production', TWILIO_AUTH_TOKEN: 't' }).variable).toBe('PUBLIC_BASE_URL');
  });

  it('names the variable in one line for each bad value', () => {
    const dir = dataDir();
    const cases: Array<[Record<string, string>, string]> = [
      [{ PORT: 'eighty' }, 'PORT'],
      [{ PORT: '70000' }, 'PORT'],
      [{ PUBLIC_BASE_URL: 'not a url' }, 'PUBLIC_BASE_URL'],
      [{ PUBLIC_BASE_URL: 'ftp://x.example' }, 'PUBLIC_BASE_URL'],
      [{ KOOZIE_AGENT_URI: 'agent.local' }, 'KOOZIE_AGENT_URI'],
      [{ ELEVENLABS_API_KEY: 'k' }, 'ELEVEN_VOICE_ID'],
      [{ ELEVEN_VOICE_ID: 'v' }, 'ELEVENLABS_API_KEY'],
      [{ ELEVENLABS_API_KEY: 'k', ELEVEN_VOICE_ID: 'v', ELEVEN_OUTPUT_FORMAT: 'pcm_16000' }, 'ELEVEN_OUTPUT_FORMAT'],
      [{ CALL_STORE: 'postgres' }, 'CALL_STORE'],
      [{ CALL_TRANSPORT: 'websocket' }, 'CALL_TRANSPORT'],
      [{ RELAY_LANGUAGE: 'English' }, 'RELAY_LANGUAGE'],
      [{ RELAY_TTS_PROVIDER: 'Azure' }, 'RELAY_TTS_PROVIDER'],
      [{ RELAY_VOICE: 'a voice; with spaces' }, 'RELAY_VOICE'],
      [{ RELAY_INTERRUPTIBLE: 'sometimes' }, 'RELAY_INTERRUPTIBLE'],
      [{ CALL_MAX_TURNS: '0' }, 'CALL_MAX_TURNS'],
      [{ CALL_STORE: 'firestore' }, 'GCP_PROJECT_ID'],
      [{ LOG_LEVEL: 'loud' }, 'LOG_LEVEL'],
      [{ ADMIN_TOKEN: 'short' }, 'ADMIN_TOKEN'],
      [{ WEBHOOK_DEADLINE_MS: '14000' }, 'WEBHOOK_DEADLINE_MS'],
      [{ AGENT_FIRST_TEXT_TIMEOUT_MS: '500' }, 'AGENT_FIRST_TEXT_TIMEOUT_MS'],
      [{ AGENT_FIRST_TEXT_TIMEOUT_MS: '30000' }, 'AGENT_FIRST_TEXT_TIMEOUT_MS'],
      [{ AGENT_TIMEOUT_MS: '10000', AGENT_FIRST_TEXT_TIMEOUT_MS: '12000' }, 'AGENT_FIRST_TEXT_TIMEOUT_MS'],
      [{ AGENT_REQUEST: 'strict' }, 'AGENT_REQUEST'],
      [{ ELEVENLABS_API_KEY: 'k', ELEVEN_VOICE_ID: 'v', ELEVENLABS_MAX_CONCURRENCY: '0' }, 'ELEVENLABS_MAX_CONCURRENCY'],
      [{ ELEVENLABS_API_KEY: 'k', ELEVEN_VOICE_ID: 'v', ELEVENLABS_MAX_CONCURRENCY: 'six' }, 'ELEVENLABS_MAX_CONCURRENCY'],
      [{ ELEVENLABS_API_KEY: 'k', ELEVEN_VOICE_ID: 'v', ELEVENLABS_DEADLINE_MS: '100' }, 'ELEVENLABS_DEADLINE_MS'],
      [{ ELEVENLABS_API_KEY: 'k', ELEVEN_VOICE_ID: 'v', ELEVENLABS_DEADLINE_MS: '20000' }, 'ELEVENLABS_DEADLINE_MS'],
      [{ SAY_VOICE: 'Joanna' }, 'SAY_VOICE'],
      [{ SAY_VOICE: 'Polly.Joanna-Loud' }, 'SAY_VOICE'],
      [{ SAY_VOICE: 'Google.en-US' }, 'SAY_VOICE'],
      [{ SAY_LANGUAGE: 'english' }, 'SAY_LANGUAGE'],
      [{ SAY_LANGUAGE: 'en_US' }, 'SAY_LANGUAGE'],
      [{ SAY_VOICE: 'Google.en-US-Neural2-F', SAY_LANGUAGE: 'en-GB' }, 'SAY_LANGUAGE'],
      [{ RATE_LIMIT_UNSIGNED_PER_SECOND: '0' }, 'RATE_LIMIT_UNSIGNED_PER_SECOND'],
      [{ RATE_LIMIT_UNSIGNED_PER_ADDRESS_PER_SECOND: 'many' }, 'RATE_LIMIT_UNSIGNED_PER_ADDRESS_PER_SECOND'],
    ];
    for (const [env, variable] of cases) {
      const error = errorOf({ DATA_DIR: dir, ...env });
      expect(error.variable).toBe(variable);
      expect(error.message.startsWith(`${variable}: `)).toBe(true);
      expect(error.message).not.toContain('\n');
    }
  });

  it('keeps the wait for the agent\'s first text within its whole turn', () => {
    const dir = dataDir();
    // Unset, the first-text wait follows a shorter turn down instead of stopping the start.
    expect(loadConfig({ DATA_DIR: dir, AGENT_TIMEOUT_MS: '10000' }).agentFirstTextTimeoutMs).toBe(10_000);
    expect(loadConfig({ DATA_DIR: dir, AGENT_TIMEOUT_MS: '60000', AGENT_FIRST_TEXT_TIMEOUT_MS: '30000' })).toMatchObject({
      agentTimeoutMs: 60_000,
      agentFirstTextTimeoutMs: 30_000,
    });
    expect(errorOf({ DATA_DIR: dir, AGENT_FIRST_TEXT_TIMEOUT_MS: '30000' }).message).toBe(
      'AGENT_FIRST_TEXT_TIMEOUT_MS: must be at most AGENT_TIMEOUT_MS (20000), got 30000',
    );
  });

  it('limits unsigned traffic apart from signed webhooks: defaults, and the operator\u2019s values', () => {
    expect(loadConfig({ DATA_DIR: dataDir() }).rateLimits).toEqual({ perCallerPerMinute: 300, signedPerSecond: 2_000, unsignedPerSecond: 100, unsignedPerAddressPerSecond: 10 });
    const config = loadConfig({
      DATA_DIR: dataDir(),
      RATE_LIMIT_GLOBAL_PER_SECOND: '500',
      RATE_LIMIT_UNSIGNED_PER_SECOND: '40',
      RATE_LIMIT_UNSIGNED_PER_ADDRESS_PER_SECOND: '4',
    });
    expect(config.rateLimits).toMatchObject({ signedPerSecond: 500, unsignedPerSecond: 40, unsignedPerAddressPerSecond: 4 });
  });

  it('makes DATA_DIR for the service user only (0700) and its local token 0600', () => {
    const dir = join(dataDir(), 'data');
    loadConfig({ DATA_DIR: dir });
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(statSync(join(dir, LOCAL_TOKEN_FILE)).mode & 0o777).toBe(0o600);
  });

  it('takes the operator settings as given', () => {
    const config = loadConfig({
      PORT: '9000',
      PUBLIC_BASE_URL: 'https://voice.example.com/',
      TWILIO_AUTH_TOKEN: 'token',
      KOOZIE_AGENT_URI: 'https://agent.example.com',
      ELEVENLABS_API_KEY: 'key',
      ELEVEN_VOICE_ID: 'voice',
      CALL_STORE: 'firestore',
      GCP_PROJECT_ID: 'my-project',
      AGENT_REQUEST: 'minimal',
      NODE_ENV: 'production',
    });
    expect(config).toMatchObject({
      port: 9000,
      publicBaseUrl: 'https://voice.example.com',
      twilioAuthTokenSource: 'env',
      agentUri: 'https://agent.example.com',
      elevenLabs: { apiKey: 'key', voiceId: 'voice', baseUrl: 'https://api.elevenlabs.io', modelId: 'eleven_flash_v2_5' },
      callStore: 'firestore',
      gcpProjectId: 'my-project',
      agentRequest: 'minimal',
    });
  });

  it('voices with ulaw_8000, within the smallest paid plan’s concurrency for the model, unless told otherwise', () => {
    const base = { DATA_DIR: dataDir(), ELEVENLABS_API_KEY: 'k', ELEVEN_VOICE_ID: 'v' };
    expect(loadConfig(base).elevenLabs).toMatchObject({ outputFormat: 'ulaw_8000', maxConcurrency: 6, deadlineMs: 2_500 });
    expect(loadConfig({ ...base, ELEVEN_MODEL_ID: 'eleven_turbo_v2_5' }).elevenLabs?.maxConcurrency).toBe(6);
    expect(loadConfig({ ...base, ELEVEN_MODEL_ID: 'eleven_multilingual_v2' }).elevenLabs?.maxConcurrency).toBe(3);
    expect(
      loadConfig({ ...base, ELEVEN_OUTPUT_FORMAT: 'mp3_44100_128', ELEVENLABS_MAX_CONCURRENCY: '30', ELEVENLABS_DEADLINE_MS: '4000' }).elevenLabs,
    ).toMatchObject({ outputFormat: 'mp3_44100_128', maxConcurrency: 30, deadlineMs: 4_000 });
    for (const format of ['mp3_22050_32', 'mp3_44100_64', 'mp3_44100_192']) {
      expect(loadConfig({ ...base, ELEVEN_OUTPUT_FORMAT: format }).elevenLabs?.outputFormat).toBe(format);
    }
  });

  it('takes every <Say> voice and language in Twilio’s own list, and the phone’s defaults when unset', () => {
    // The SayVoice and SayLanguage types of Twilio's helper library: its documented names.
    const types = readFileSync(join(import.meta.dirname, '../node_modules/twilio/lib/twiml/VoiceResponse.d.ts'), 'utf8');
    const names = (type: string) => [...new RegExp(`type ${type} = ([^;]+);`).exec(types)![1]!.matchAll(/"([^"]+)"/g)].map((m) => m[1]!);
    const dir = dataDir();
    const voices = names('SayVoice');
    expect(voices.length).toBeGreaterThan(100);
    for (const voice of voices) expect(loadConfig({ DATA_DIR: dir, SAY_VOICE: voice }).sayVoice).toBe(voice);
    for (const language of names('SayLanguage')) expect(loadConfig({ DATA_DIR: dir, SAY_LANGUAGE: language }).sayLanguage).toBe(language);
    expect(loadConfig({ DATA_DIR: dir, SAY_VOICE: 'Google.fil-ph-Neural2-A', SAY_LANGUAGE: 'fil-PH' })).toMatchObject({ sayLanguage: 'fil-PH' });
    expect(loadConfig({ DATA_DIR: dir })).toMatchObject({ sayVoice: undefined, sayLanguage: undefined });
  });

  it('reads neither REPLY_PIECES nor GCP_REGION: the benchmark\'s baseline is not a setting, and nothing uses a region', () => {
    const config = loadConfig({ DATA_DIR: dataDir(), REPLY_PIECES: 'words', GCP_REGION: 'europe-west1' });
    expect(Object.keys(config)).not.toContain('replyPieces');
    expect(Object.keys(config)).not.toContain('gcpRegion');
  });
});
