/**
 * Model-based tests of the ConversationRelay transport: `xstate/graph` generates
 * the shortest path to every vertex of the relay model (relay-model.ts: the call
 * machine with replies streamed, offered only what a relay call has), and each
 * path is played against the real service with CALL_TRANSPORT=relay: the
 * simulated ConversationRelay on a real WebSocket, the action URL, `/call-status`
 * and the loopback fake agent (relay-driver.ts). For every state on the path the
 * test checks what Twilio was sent (text tokens, the machine's phrases, `end`,
 * the TwiML of `/voice` and of the action URL), what the agent was asked, and what
 * the store holds; the stored path of the call must be the model's path.
 *
 * The run ends with coverage, as call-paths.test.ts's: the edges the relay paths
 * reached, together with those the `<Gather>` model's paths take (which
 * call-paths.test.ts plays against the service), must be every edge of the
 * machine; and every edge only a relay call can take must be reached here.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { callMachine, PHRASES, stateName, type CallContext } from '../../machines/call.machine.ts';
import { machineGraph } from '../../src/diagram/machine-graph.ts';
import { startFakeAgent, type FakeAgent } from '../fakes/agent-server.ts';
import { PUBLIC_BASE_URL } from '../support/service.ts';
import { addCoverage, AGENT_REPLY, callPaths, coverageOfPaths, LATE, traceOf, type Coverage } from './call-model.ts';
import { verbsOf, type ModelStep } from './path-driver.ts';
import { RelayPathDriver, spokenIn, turnsOf } from './relay-driver.ts';
import { AGENT_FIRST_WORDS, RELAY_INPUT, relayPaths, replayRelay } from './relay-model.ts';

const graph = machineGraph(callMachine);
const paths = relayPaths();
const covered: Coverage = { states: new Set(), edges: new Set() };

let agent: FakeAgent;
beforeAll(async () => {
  agent = await startFakeAgent();
});
afterAll(async () => {
  await agent?.close();
});

interface StateCheck {
  driver: RelayPathDriver;
  step: ModelStep;
  index: number;
  /** The step ends its segment: what Twilio was sent and what the store holds can be compared in full. */
  answered: boolean;
}

/** What the agent must have been told of the call: each earlier turn whose reply the caller heard, with only what they heard. */
function heardHistory(turns: CallContext['turns']) {
  return turns.flatMap((t) =>
    t.reply && !t.failure
      ? [
          { role: 'user', content: t.caller },
          { role: 'assistant', content: t.reply },
        ]
      : [],
  );
}

/** The agent's requests for this call. */
function askedBy(driver: RelayPathDriver) {
  return agent.requests.filter((r) => r.callSid === driver.callSid);
}

const STATE_CHECKS: Record<string, (check: StateCheck) => void | Promise<void>> = {
  listening: ({ driver, step, answered, index }) => {
    if (!answered) return;
    const { context } = step.state;
    const { result } = driver;
    const spoken = spokenIn(result!.messages);
    const trigger = driver.segmentAt(index)!.trigger.kind;
    expect([spoken.ends, spoken.others]).toEqual([[], []]);
    if (trigger === 'dial' || trigger === 'drop') {
      // Connected (again): the phrase is the session's welcome greeting, said by Twilio, not sent again.
      expect(result!.connect).toMatchObject({ url: 'wss://voice.example.test/relay', action: `${PUBLIC_BASE_URL}/relay-ended` });
      expect(result!.connect!.attributes).toMatchObject({ welcomeGreeting: context.prompt.text, dtmfDetection: 'true' });
      expect(context.prompt.text).toBe(trigger === 'dial' ? PHRASES.greeting : PHRASES.resumed);
      expect(spoken.texts).toEqual([]);
    } else if (trigger === 'interrupt') {
      // The caller spoke over the reply: nothing more of it is sent; the turn keeps what they heard.
      expect(spoken.texts).toEqual([]);
      expect(result!.record.turns.at(-1)).toMatchObject({ reply: context.turns.at(-1)!.reply, interrupted: true });
    } else if (context.prompt.kind === 'reply') {
      // The agent's words as it wrote them, chunk by chunk, then the end of the reply.
      expect(spoken.texts.map((t) => t.token)).toEqual([AGENT_FIRST_WORDS, AGENT_REPLY.slice(AGENT_FIRST_WORDS.length), '']);
      expect(spoken.texts.map((t) => t.last)).toEqual([false, false, true]);
      expect(result!.record.turns.at(-1)).toMatchObject({ reply: AGENT_REPLY, voicedBy: 'text' });
    } else {
      expect(spoken.texts).toEqual([{ token: context.prompt.text, last: true }]);
    }
    expect(result!.record.state).toBe('listening');
  },
  thinking: async ({ driver, step, answered, index }) => {
    // The agent was asked once per turn, with the caller's words (and keys), and the history the caller heard.
    const { turns } = step.state.context;
    const asked = askedBy(driver);
    expect(asked.map((r) => r.message)).toEqual(turns.map((t) => t.caller));
    expect(asked.at(-1)?.history).toEqual(heardHistory(turns.slice(0, -1)));
    if (turns.at(-1)?.digits) expect(asked.at(-1)).toMatchObject({ digits: turns.at(-1)!.digits });
    if (!answered) return;
    const spoken = spokenIn(driver.result!.messages);
    expect([spoken.texts, spoken.ends]).toEqual([[], []]);
    // The machine's filler: the hold line the first time the caller waits in a turn (said once), a pause after.
    const holds = spokenIn(driver.messages().slice(driver.turnStart(driver.segmentAt(index)!))).holds;
    if (step.state.context.filler === 'hold') expect(holds).toBe(1);
    else expect(holds).toBeLessThanOrEqual(1);
  },
  speaking: ({ driver, step, answered }) => {
    if (!answered) return;
    // Mid-answer: the agent's first words, as it wrote them, and no end yet.
    expect(step.state.context.prompt.kind).toBe('reply');
    expect(spokenIn(driver.result!.messages).texts).toEqual([{ token: AGENT_FIRST_WORDS, last: false }]);
  },
  terminating: ({ driver, step, answered }) => {
    if (!answered) return;
    const { context } = step.state;
    const spoken = spokenIn(driver.result!.messages);
    // `end`, and the closing line said by the action URL's TwiML, heard in full before the hang-up.
    expect(spoken.texts).toEqual([]);
    expect(spoken.ends).toHaveLength(1);
    expect(JSON.parse(spoken.ends[0]!.handoffData!)).toMatchObject({ reason: context.endReason });
    const verbs = verbsOf(driver.result!.actionTwiml!);
    expect(verbs.map((v) => [v.verb, v.text])).toEqual([
      ['Say', context.prompt.text],
      ['Hangup', ''],
    ]);
    expect(driver.result!.record).toMatchObject({ state: 'terminating', endReason: context.endReason });
  },
  ended: ({ driver, step, answered }) => {
    if (!answered) return;
    expect(driver.result!.statusAnswer!.status).toBe(200);
    expect(verbsOf(driver.result!.statusAnswer!.body)).toEqual([]);
    expect(driver.result!.record).toMatchObject({ state: 'ended', status: 'completed', endReason: step.state.context.endReason });
  },
};

/**
 * Every step: the stored path starts with the model's, and is the model's where a
 * segment ends at rest. A segment ending mid-turn finds the turn claimed: the store
 * holds the path up to it.
 */
function expectStoredPath({ driver, step, answered }: StateCheck) {
  const record = driver.result!.record;
  const expected = step.state.context.path.map((p) => [p.state, p.event]);
  const stored = record.path.map((p) => [p.state, p.event]);
  if (!answered) expect(stored.slice(0, expected.length)).toEqual(expected);
  else if (step.state.hasTag('working')) expect(stored).toEqual(expected.slice(0, stored.length));
  else {
    expect(stored).toEqual(expected);
    expect(turnsOf(record.turns)).toEqual(turnsOf(step.state.context.turns));
  }
}

/** The caller interrupted, hung up or the line dropped while the agent was answering: its connection is closed. */
async function expectAgentStopped({ driver, index }: StateCheck, steps: ModelStep[]) {
  const segment = driver.segmentAt(index)!;
  if (index !== segment.first || !['interrupt', 'drop', 'hangUp'].includes(segment.trigger.kind)) return;
  if (!['thinking', 'speaking'].includes(stateName(steps[index - 1]!.state.value))) return;
  await expect.poll(() => agent.hungUp(), { timeout: 2_000 }).toBeGreaterThan(driver.hungUpBefore);
}

function describePath(steps: ModelStep[]): string {
  const names = steps.slice(1).map(({ event }) => {
    const label = graph.edges.find((e) => e.event === event.type)?.trigger ?? event.type;
    if (event.type === 'SPEECH') return `SPEECH "${event.text}"`;
    if (event.type === 'SLOW') return event.at >= LATE ? 'SLOW (late)' : 'SLOW';
    if (event.type === 'xstate.done.actor.voice') return event.output.pieces ? `${label} (the reply)` : label;
    return label;
  });
  return `${names.join(' › ') || 'call connects'} → ${stateName(steps.at(-1)!.state.value)}`;
}

describe('every generated path of a ConversationRelay call, against the running service', () => {
  let callNumber = 0;
  for (const path of paths) {
    const generated = path.steps as unknown as ModelStep[];
    const steps: ModelStep[] = replayRelay(generated.map((s) => s.event)).map((state, i) => ({
      event: generated[i]!.event,
      state: state as unknown as ModelStep['state'],
    }));
    it(describePath(steps), async () => {
      callNumber += 1;
      const driver = new RelayPathDriver(steps, `CA${(0xe0000 + callNumber).toString(16).padStart(32, '0')}`, agent);
      let index = -1;
      const execute = async (step: unknown) => {
        index = generated.indexOf(step as ModelStep);
        await driver.runStepEvent(index);
      };
      const check = async (state: unknown) => {
        const step = steps[index]!;
        expect(stateName(step.state.value)).toBe(stateName((state as ModelStep['state']).value));
        const checked: StateCheck = { driver, step, index, answered: driver.segmentAt(index)!.last === index };
        expectStoredPath(checked);
        await expectAgentStopped(checked, steps);
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
      addCoverage(covered, traceOf(steps.map((s) => s.event), RELAY_INPUT));
    });
  }

  it('reaches every edge only a relay call takes, and with the <Gather> model every state and edge of the machine', () => {
    const gather = coverageOfPaths(callPaths() as never);
    const states = graph.states.map((s) => s.id);
    const edges = graph.edges.map((e) => e.id);
    const missingStates = states.filter((s) => !covered.states.has(s) && !gather.states.has(s));
    const missingEdges = edges.filter((e) => !covered.edges.has(e) && !gather.edges.has(e));
    // What the <Gather> paths never take (the caller speaking over streamed text, a session resumed) is reached here.
    const relayOnly = edges.filter((e) => !gather.edges.has(e));
    const line =
      `relay model coverage: transitions ${edges.filter((e) => covered.edges.has(e)).length}/${edges.length}, ` +
      `relay-only ${relayOnly.filter((e) => covered.edges.has(e)).length}/${relayOnly.length}, ` +
      `with <Gather> ${edges.length - missingEdges.length}/${edges.length} (${paths.length} paths)`;
    console.log(line);
    expect(relayOnly.length, line).toBeGreaterThan(0);
    expect({ missingStates, missingEdges, relayOnlyMissed: relayOnly.filter((e) => !covered.edges.has(e)) }, line).toEqual({
      missingStates: [],
      missingEdges: [],
      relayOnlyMissed: [],
    });
  });
});
