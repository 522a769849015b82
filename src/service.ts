/**
 * Builds the running service from a validated Config: store, agent, speech, engine
 * and HTTP app, wired together. Used by src/server.ts and by tests that want the
 * real service with fakes of the outside world.
 */
import type { Logger } from 'pino';
import { PHRASES } from '../machines/call.machine.ts';
import { createAgentClient } from './agent/agent-client.ts';
import type { Agent } from './agent/agent.ts';
import { createLocalAgent } from './agent/local-agent.ts';
import type { Config } from './config.ts';
import { phraseAudioPath } from './engine/audio-address.ts';
import { CallEngine, type CallView } from './engine/call-engine.ts';
import { Turns } from './engine/turn.ts';
import { buildApp, type App } from './http/app.ts';
import { HttpClient } from './http-client/http-exchange.ts';
import { createAudioUrlSigner } from './speech/audio-url.ts';
import type { PieceMode } from './speech/speakable-pieces.ts';
import { createElevenLabsSpeech } from './speech/elevenlabs.ts';
import { VoiceLibrary } from './speech/voice-library.ts';
import type { CallStore } from './store/call-store.ts';
import { SqliteCallStore } from './store/sqlite-store.ts';
import { renderCallTwiml } from './transports/gather/twiml.ts';
import { RelaySessions } from './transports/relay/relay-session.ts';
import { renderRelayListening } from './transports/relay/webhook-twiml.ts';

export interface Service {
  app: App;
  engine: CallEngine;
  store: CallStore;
  agent: Agent;
  voice: VoiceLibrary | undefined;
  /** Synthesises the fixed phrases once, in the background. */
  warmUp(): Promise<void>;
  close(): Promise<void>;
}

export interface ServiceOverrides {
  now?: () => number;
  store?: CallStore;
  /** `whole` voices a reply only once the agent has finished: the benchmark's baseline (bench/service-entry.ts), not a setting. */
  replyPieces?: PieceMode;
}

export async function createService(config: Config, log: Logger, overrides: ServiceOverrides = {}): Promise<Service> {
  const now = overrides.now ?? Date.now;
  const store = overrides.store ?? (await openStore(config));
  // One keep-alive pool for the agent and ElevenLabs.
  const http = new HttpClient();
  const agent = config.agentUri
    ? createAgentClient({
        baseUrl: config.agentUri,
        log,
        http,
        requestShape: config.agentRequest,
        firstTextTimeoutMs: config.agentFirstTextTimeoutMs,
        totalTimeoutMs: config.agentTimeoutMs,
      })
    : createLocalAgent();
  const eleven = config.elevenLabs;
  const voice = eleven
    ? new VoiceLibrary({
        speech: createElevenLabsSpeech({ ...eleven, http, timeoutMs: eleven.deadlineMs }),
        voiceKey: `${eleven.voiceId}|${eleven.modelId}|${eleven.outputFormat}`,
        maxConcurrent: eleven.maxConcurrency,
        deadlineMs: eleven.deadlineMs,
      })
    : undefined;
  // The phone's own voice, for every <Say>: the fallback when a piece has no audio.
  const say = { sayVoice: config.sayVoice, sayLanguage: config.sayLanguage };
  const audioUrls = createAudioUrlSigner({ secret: config.twilioAuthToken, ttlSec: config.audioUrlTtlSec, now });

  // ConversationRelay sockets open in this process, by call: streamed replies go to them.
  const relaySessions = new RelaySessions();
  const turns = new Turns({
    agent,
    voice,
    log,
    now,
    agentTimeoutMs: config.agentTimeoutMs,
    replyPieces: overrides.replyPieces ?? 'sentences',
    textSink: (callSid) => relaySessions.get(callSid),
  });
  const engine = new CallEngine({
    store,
    turns,
    log,
    now,
    webhookDeadlineMs: config.webhookDeadlineMs,
    agentTimeoutMs: config.agentTimeoutMs,
    maxTurns: config.maxTurns,
    onSettled: (callSid, view) => relaySessions.settled(callSid, view),
  });
  // A streamed call listens over ConversationRelay; every other state is TwiML as for <Gather>.
  const render = (view: CallView) =>
    view.context.replyDelivery === 'streamed' && view.state === 'listening'
      ? renderRelayListening(view, config.publicBaseUrl, config.transport.relay)
      : renderCallTwiml(view, {
          baseUrl: config.publicBaseUrl,
          signAudio: (path) => audioUrls.sign(path),
          holdAudio: voice?.phraseIfReady('hold', PHRASES.hold) ? phraseAudioPath('hold') : undefined,
          ...say,
        });

  const app = buildApp({
    engine,
    render,
    replyDelivery: config.transport.kind === 'relay' ? 'streamed' : 'pieces',
    relaySessions,
    store,
    voice,
    audioUrls,
    publicBaseUrl: config.publicBaseUrl,
    twilioAuthToken: config.twilioAuthToken,
    audioUrlTtlSec: config.audioUrlTtlSec,
    rateLimits: config.rateLimits,
    answerBudgetMs: config.webhookAnswerBudgetMs,
    webhookDeadlineMs: config.webhookDeadlineMs,
    adminToken: config.adminToken,
    ...say,
    log,
    now,
  });

  return {
    app,
    engine,
    store,
    agent,
    voice,
    async warmUp() {
      if (!voice) return;
      const failed = await voice.warmUp(PHRASES);
      if (failed > 0) log.warn({ failed }, 'some fixed phrases could not be synthesised yet; they will be tried again per call');
    },
    async close() {
      await app.close();
      engine.stop();
      http.close();
      await store.close();
    },
  };
}

async function openStore(config: Config): Promise<CallStore> {
  if (config.callStore === 'firestore') {
    // Loaded only when chosen: the Firestore client is heavy and the embedded store needs none of it.
    const { FirestoreCallStore } = await import('./store/firestore-store.ts');
    return new FirestoreCallStore({
      projectId: config.gcpProjectId!,
      snapshotTtlMs: config.snapshotTtlHours * 3_600_000,
    });
  }
  return new SqliteCallStore(config.dataDir);
}
