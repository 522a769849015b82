/**
 * The machine's pure steps, as XState's `initialTransition()` and `transition()`
 * compute them (the same calls on the machine, with an inert scope that runs no
 * action), with one scope made once instead of one per step. Those functions build
 * a throw-away actor for every step, which computes the machine's initial state
 * (without input, so the `context` factory throws and XState catches it): 36–42 µs
 * a step against 7–12 µs here, once or twice per request. A pure step starts no
 * child actor, so nothing registers in the scope's system; the actions a step
 * returns are not run here either (a live actor runs them, see call-engine.ts).
 *
 * @see https://github.com/statelyai/xstate/blob/main/packages/core/src/transition.ts
 */
import { createActor, type AnyActorScope, type SnapshotFrom } from 'xstate';
import type { CallEvent, CallInput, CallMachine } from '../../machines/call.machine.ts';

type CallSnapshot = SnapshotFrom<CallMachine>;

export class PureSteps {
  readonly #machine: CallMachine;
  readonly #scope: AnyActorScope;

  constructor(machine: CallMachine) {
    this.#machine = machine;
    const self = createActor(machine, { input: undefined as never });
    const ignore = () => {};
    this.#scope = { self, system: self.system, id: '', sessionId: '', defer: ignore, logger: ignore, stopChild: ignore, emit: ignore, actionExecutor: ignore };
  }

  initial(input: CallInput): CallSnapshot {
    return this.#machine.getInitialSnapshot(this.#scope, input);
  }

  next(snapshot: CallSnapshot, event: CallEvent): CallSnapshot {
    return this.#machine.transition(snapshot, event, this.#scope);
  }
}
