/**
 * The in-process lock: one step at a time per call, in arrival order, calls
 * independent of each other, and a failed step never holds up the next.
 * Ordering is observed with promises the test releases, never with timers.
 */
import { describe, expect, it } from 'vitest';
import { CallLocks } from '../../src/engine/call-lock.ts';

function gate() {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return { open, opened };
}

/** Lets every queued promise callback run. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

describe('the call lock', () => {
  it("runs one call's steps one at a time, in the order they arrived", async () => {
    const locks = new CallLocks();
    const log: string[] = [];
    const gates = [gate(), gate(), gate()];
    const runs = gates.map((g, i) =>
      locks.run('CA1', async () => {
        log.push(`start ${i}`);
        await g.opened;
        log.push(`end ${i}`);
        return i;
      }),
    );
    await settle();
    expect(log).toStrictEqual(['start 0']);
    gates[2]!.open();
    gates[1]!.open();
    await settle();
    expect(log).toStrictEqual(['start 0']);
    gates[0]!.open();
    expect(await Promise.all(runs)).toStrictEqual([0, 1, 2]);
    expect(log).toStrictEqual(['start 0', 'end 0', 'start 1', 'end 1', 'start 2', 'end 2']);
  });

  it('lets another call run while one is held', async () => {
    const locks = new CallLocks();
    const held = gate();
    const first = locks.run('CA1', () => held.opened.then(() => 'CA1'));
    let otherRan = false;
    const other = locks.run('CA2', async () => {
      otherRan = true;
      return 'CA2';
    });
    await settle();
    expect(otherRan).toBe(true);
    held.open();
    expect(await Promise.all([first, other])).toStrictEqual(['CA1', 'CA2']);
  });

  it('hands a failed step its error and runs the next step after it', async () => {
    const locks = new CallLocks();
    const failing = locks.run('CA1', async () => {
      throw new Error('store unreachable');
    });
    const next = locks.run('CA1', async () => 'ran');
    await expect(failing).rejects.toThrow('store unreachable');
    expect(await next).toBe('ran');
  });

  it('forgets a call once its last step is done', async () => {
    const locks = new CallLocks();
    await Promise.allSettled([locks.run('CA1', async () => 1), locks.run('CA1', async () => Promise.reject(new Error('x'))), locks.run('CA2', async () => 2)]);
    await settle();
    expect(locks.size).toBe(0);
  });
});
