/**
 * Model-based tests: `xstate/graph` generates the shortest path to every vertex of
 * the call machine's model (call-model.ts), and each path is played against the
 * real service over loopback HTTP: signed Twilio webhooks, the fake agent and the
 * fake ElevenLabs (path-driver.ts). For every state on the path the test checks
 * what Twilio received (TwiML) and what the store holds; the stored path of the
 * call must be the model's path, state for state and event for event.
 *
 * The run ends with coverage: states and edges of the machine (src/diagram's
 * graph, the same edges the diagram draws) reached by paths that passed, out of
 * all. Every state must be reached; an edge the `<Gather>` paths cannot take (the
 * caller speaking over streamed text, a relay session resumed) must be one the
 * relay model's paths take (relay-paths.test.ts, which fails unless its paths
 * reach every one of them). Anything less fails.
 *
 * How QA adds an event sample or a state assertion: docs/qa-model-tests.md.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { callMachine, PHRASES, stateName } from '../../machines/call.machine.ts';
import { machineGraph } from '../../src/diagram/machine-graph.ts';
import { startFakeAgent, type FakeAgent } from '../fakes/agent-server.ts';
import { startFakeElevenLabs, type FakeElevenLabs } from '../fakes/elevenlabs-server.ts';
import { ELEVENLABS_KEY, PUBLIC_BASE_URL } from '../support/service.ts';
import { addCoverage, AGENT_REPLY, callPaths, coverageOfPaths, LATE, replay, traceOf, type Coverage } from './call-model.ts';
import { PathDriver, verbsOf, type ModelStep } from './path-driver.ts';
import { RELAY_INPUT, relayPaths } from './relay-model.ts';

const graph = machineGraph(callMachine);
const paths = callPaths();
const covered: Coverage = { states: new Set(), edges: new Set() };

let agent: FakeAgent;
let eleven: FakeElevenLabs;
beforeAll(async () => {
  agent = await startFakeAgent();
  eleven = await startFakeElevenLabs({ apiKey: ELEVENLABS_KEY });
});
afterAll(async () => {
  await agent?.close();
  await eleven?.close();
});

/** What one state check sees: the model's state and the service after the step. */
interface StateCheck {
  driver: PathDriver;
  step: ModelStep;
  index: number;
  /** The step is where a webhook's answer is complete: TwiML and store can be compared in full. */
  answered: boolean;
}

/**
 * Assertions per state. `answered` steps see Twilio's answer; the others are
 * states the service passed through inside a webhook, checked in the stored path.
 */
const STATE_CHECKS: Record<string, (check: StateCheck) => void | Promise<void>> = {
  listening: async ({ driver, step, answered }) => {
    if (!answered) return;
    const [gather, ...rest] = verbsOf(driver.result!.twiml);
    expect(rest).toEqual([]);
    // Speech or a key; the action names the floor the caller was given, as the model counts it.
    expect(gather).toMatchObject({ verb: 'Gather', attrs: { input: 'speech dtmf', action: `${PUBLIC_BASE_URL}/speech-result?floor=${step.state.context.floor}` } });
    await expectPrompt(driver, step, gather!.children);
    expect(driver.result!.record.state).toBe('listening');
  },
  thinking: ({ driver, step, answered }) => {
    // The agent was asked exactly once per turn, with the caller's words.
    const asked = agent.requests.filter((r) => r.callSid === driver.callSid).map((r) => r.message);
    expect(asked).toEqual(step.state.context.turns.map((t) => t.caller));
    if (answered) expectHold(driver, step, 'thinking');
  },
  speaking: ({ driver, step, answered }) => {
    if (answered) expectHold(driver, step, 'speaking');
  },
  replying: async ({ driver, step, answered }) => {
    // The agent was asked once for the whole reply, whichever instance voiced which part.
    const asked = agent.requests.filter((r) => r.callSid === driver.callSid).map((r) => r.message);
    expect(asked).toEqual(step.state.context.turns.map((t) => t.caller));
    if (!answered) return;
    // The first sentence, then back for the rest once it has played (PLAYED).
    const verbs = verbsOf(driver.result!.twiml);
    expect(verbs.at(-1)).toMatchObject({ verb: 'Redirect', text: `${PUBLIC_BASE_URL}/continue?played=1` });
    await expectPrompt(driver, step, verbs.slice(0, -1));
    expect(driver.result!.record.state).toBe('replying');
    // Once the agent has finished, its whole answer is in the store, for whichever instance Twilio comes back to.
    expect(driver.result!.record.turns.at(-1)?.written).toEqual(step.state.context.turns.at(-1)?.written);
  },
  terminating: async ({ driver, step, answered }) => {
    if (!answered) return;
    const verbs = verbsOf(driver.result!.twiml);
    expect(verbs.at(-1)?.verb).toBe('Hangup');
    await expectPrompt(driver, step, verbs.slice(0, -1));
    expect(driver.result!.record).toMatchObject({ state: 'terminating', endReason: step.state.context.endReason });
  },
  ended: ({ driver, step, answered }) => {
    if (!answered) return;
    expect(verbsOf(driver.result!.twiml)).toEqual([]);
    expect(driver.result!.record).toMatchObject({ state: 'ended', status: 'completed', endReason: step.state.context.endReason });
    expect(driver.result!.record.endedAt).toBeGreaterThanOrEqual(driver.result!.record.startedAt);
  },
};

/** Every step: the stored path starts with the model's path, and matches it where a webhook ends. */
function expectStoredPath({ driver, step, answered }: StateCheck) {
  const record = driver.result!.record;
  const expected = step.state.context.path.map((p) => [p.state, p.event]);
  const stored = record.path.map((p) => [p.state, p.event]);
  if (answered) {
    expect(stored).toEqual(expected);
    expect(record.turns.map((t) => ({ caller: t.caller, reply: t.reply, failed: t.failure !== undefined }))).toEqual(
      step.state.context.turns.map((t) => ({ caller: t.caller, reply: t.reply, failed: t.failure !== undefined })),
    );
  } else {
    expect(stored.slice(0, expected.length)).toEqual(expected);
  }
}

/**
 * The prompt the model says the caller hears: synthesised audio Twilio can fetch
 * (one file per piece of a reply), or the same words read out.
 */
async function expectPrompt(driver: PathDriver, step: ModelStep, verbs: ReturnType<typeof verbsOf>) {
  const { context } = step.state;
  const prompt = context.prompt;
  const voiced = driver.segmentAt(driver.steps.indexOf(step))?.voice;
  expect(voiced?.prompt.key).toBe(prompt.key);
  if (voiced?.outcome === 'audio') {
    const paths = driver.audioPathsOf(context);
    expect(verbs.map((v) => v.verb)).toEqual(paths.map(() => 'Play'));
    for (const [i, verb] of verbs.entries()) {
      expect(new URL(verb.text).pathname).toBe(paths[i]);
      const audio = await driver.fetchAudio(verb.text);
      expect(audio).toMatchObject({ status: 200, contentType: 'audio/wav' });
    }
  } else {
    expect(verbs).toHaveLength(1);
    expect(verbs[0]).toMatchObject({ verb: 'Say', text: prompt.text });
    expect(driver.result!.record.lastError).toMatch(/^speech: /);
  }
}

/**
 * A hold: the hold phrase the first time the caller waits, silence after that
 * (and while a reply the caller is hearing is still being voiced), then back to
 * `/continue`. The service may hold more often than the path (a busy machine),
 * never less, so a second hold of the model is always a pause.
 */
function expectHold(driver: PathDriver, step: ModelStep, state: string) {
  const verbs = verbsOf(driver.result!.twiml);
  expect(verbs.at(-1)).toMatchObject({ verb: 'Redirect', text: `${PUBLIC_BASE_URL}/continue` });
  // The machine's filler: a pause for a second wait, or once the caller hears the reply.
  if (step.state.context.filler === 'pause') expect(verbs[0]?.verb).toBe('Pause');
  else expect(verbs[0]).toSatisfy((v: { verb: string; text: string }) => (v.verb === 'Say' && v.text === PHRASES.hold) || v.verb === 'Pause');
  expect(driver.result!.record.state).toBe(state);
}

function describePath(steps: ModelStep[]): string {
  const names = steps.slice(1).map(({ event }) => {
    const edge = graph.edges.find((e) => e.event === event.type);
    const label = edge?.trigger ?? event.type;
    if (event.type === 'SPEECH') return `SPEECH "${event.text}"`;
    if (event.type === 'SLOW') return event.at >= LATE ? 'SLOW (late)' : 'SLOW';
    if (event.type === 'xstate.done.actor.voice' && event.output.pieces) {
      const [piece] = event.output.pieces;
      const part = piece?.text === AGENT_REPLY ? 'first sentence, more to come' : event.output.agentCompleteAt === undefined ? 'the rest, from the store' : 'the rest';
      return `${label} (${part})`;
    }
    if (event.type === 'xstate.error.actor.voice' && typeof event.error !== 'string') return `${label} (the rest)`;
    return label;
  });
  return `${names.join(' › ') || 'call connects'} → ${stateName(steps.at(-1)!.state.value)}`;
}

describe('every generated path through the call machine, against the running service', () => {
  let callNumber = 0;
  for (const path of paths) {
    const generated = path.steps as unknown as ModelStep[];
    const steps: ModelStep[] = replay(generated.map((s) => s.event)).map((state, i) => ({
      event: generated[i]!.event,
      state: state as unknown as ModelStep['state'],
    }));
    it(describePath(steps), async () => {
      callNumber += 1;
      const driver = new PathDriver(steps, `CA${callNumber.toString(16).padStart(32, '0')}`, { agent, eleven });
      let index = -1;
      const execute = async (step: unknown) => {
        index = generated.indexOf(step as ModelStep);
        await driver.runStepEvent(index);
      };
      const check = async (state: unknown) => {
        const step = steps[index]!;
        expect(stateName(step.state.value)).toBe(stateName((state as ModelStep['state']).value));
        const segment = driver.segmentAt(index)!;
        const checked: StateCheck = { driver, step, index, answered: segment.last === index };
        expectStoredPath(checked);
        await STATE_CHECKS[stateName(step.state.value)]?.(checked);
      };
      try {
        const eventTypes = new Set(generated.map((s) => s.event.type));
        await path.test({
          events: Object.fromEntries([...eventTypes].map((type) => [type, execute])),
          states: Object.fromEntries(Object.keys(STATE_CHECKS).map((key) => [key, check])),
        } as Parameters<typeof path.test>[0]);
      } finally {
        await driver.close();
      }
      addCoverage(covered, traceOf(steps.map((s) => s.event)));
    });
  }

  it('reaches every state of the machine, and with the relay model every edge', () => {
    // Edges a <Gather> call never takes (the caller speaking over streamed text, a
    // relay session resumed) must be taken by the relay model's paths, which
    // relay-paths.test.ts plays against the service and checks reach every one of them.
    const relay = coverageOfPaths(relayPaths() as never, RELAY_INPUT);
    const states = graph.states.map((s) => s.id);
    const edges = graph.edges.map((e) => e.id);
    const missingStates = states.filter((s) => !covered.states.has(s));
    const gatherMissed = edges.filter((e) => !covered.edges.has(e));
    const missingEdges = gatherMissed.filter((e) => !relay.edges.has(e));
    const line =
      `model coverage: states ${states.length - missingStates.length}/${states.length}, ` +
      `transitions ${edges.length - gatherMissed.length}/${edges.length}, with the relay model ${edges.length - missingEdges.length}/${edges.length} (${paths.length} paths)`;
    console.log(line);
    expect({ missingStates, missingEdges }, line).toEqual({ missingStates: [], missingEdges: [] });
  });
});
