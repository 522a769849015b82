/**
 * The fake agent and fake ElevenLabs a test file shares, started once for the file,
 * reset after every test (requests forgotten, behaviour back to the default), and
 * the services each test started, closed after it.
 */
import { afterAll, afterEach, beforeAll } from 'vitest';
import { startFakeAgent, type FakeAgent, type FakeAgentScript } from '../fakes/agent-server.ts';
import { startFakeElevenLabs, type FakeElevenLabs } from '../fakes/elevenlabs-server.ts';
import { ELEVENLABS_KEY, type RunningService } from './service.ts';

export interface FakeBackends {
  /** Set once the file's `beforeAll` has run. */
  agent: FakeAgent;
  eleven: FakeElevenLabs;
  /** Services to close after the current test. */
  running: RunningService[];
}

export function useFakeBackends(options: { agent?: FakeAgentScript } = {}): FakeBackends {
  const agentDefault: FakeAgentScript = options.agent ?? { kind: 'reply' };
  const fakes = { running: [] as RunningService[] } as FakeBackends;
  beforeAll(async () => {
    fakes.agent = await startFakeAgent({ behaviour: agentDefault });
    fakes.eleven = await startFakeElevenLabs({ apiKey: ELEVENLABS_KEY });
  });
  afterAll(async () => {
    await fakes.agent?.close();
    await fakes.eleven?.close();
  });
  afterEach(async () => {
    fakes.agent.requests.length = 0;
    fakes.eleven.requests.length = 0;
    fakes.agent.setBehaviour(agentDefault);
    fakes.eleven.setBehaviour({ kind: 'audio' });
    await Promise.all(fakes.running.splice(0).map((r) => r.close()));
  });
  return fakes;
}
