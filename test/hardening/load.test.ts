/**
 * Load: 200 concurrent calls on loopback for a bounded time (HARDENING_LOAD_SECONDS,
 * default 15), with the fake agent and the fake ElevenLabs, through the same code
 * as `node bench/load.ts`. No error, no lost turn (every finished call's stored
 * record holds exactly the turns its caller said, answered), p99 reported, and
 * memory retained per finished call under a loose bound: measured right after
 * the calls, it still holds their pending timeouts (20 s for the agent); the bench
 * waits for those and measures over a longer run (docs/hardening.md).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadTable, runLoadInHalves, startLoadTarget, type LoadOptions, type LoadTarget } from '../../bench/load.ts';
import { figure } from './support.ts';

const SECONDS = Number(process.env.HARDENING_LOAD_SECONDS ?? '15');
const OPTIONS: LoadOptions = { concurrency: 200, durationMs: SECONDS * 1000, turnsPerCall: 3, thinkMs: 250 };

let target: LoadTarget;
beforeAll(async () => {
  // Production timeouts: on a CI machine busy with other suites a turn may take seconds.
  target = await startLoadTarget();
});
afterAll(async () => {
  await target.close();
});

describe('load', () => {
  it(`holds ${OPTIONS.concurrency} concurrent calls for ${SECONDS} s with no error and no lost turn`, { timeout: SECONDS * 1000 + 60_000 }, async () => {
    const halves = await runLoadInHalves(target, OPTIONS);
    console.log(loadTable(OPTIONS, halves, target));
    const { first, second, memory } = halves;
    const errors = [...first.errors, ...second.errors];
    const lost = [...first.lost, ...second.lost];
    figure(
      `load: ${OPTIONS.concurrency} concurrent calls, ${first.callsFinished + second.callsFinished} calls / ${first.turns + second.turns} turns in ${SECONDS} s; ` +
        `errors ${errors.length}, lost ${lost.length}; webhook p99 ${second.webhookMs.p99} ms; heap retained per call ${memory.heapPerCallBytes} B`,
    );

    expect(errors.slice(0, 5)).toEqual([]);
    expect(lost.slice(0, 5)).toEqual([]);
    expect(target.problems.filter((line) => line.includes('"level":"error"'))).toEqual([]);
    expect(target.leakedSecrets).toBe(0);
    // Calls really were concurrent and finished in numbers.
    expect(first.callsFinished + second.callsFinished).toBeGreaterThan(OPTIONS.concurrency * 2);
    // Every webhook well inside Twilio's 15 s, even on a loaded 2-core CI machine.
    expect(second.webhookMs.max).toBeLessThan(10_000);
    // Loose: keeping a call's snapshot, log or audio per call would fail it. Measured here 8–19 KB,
    // most of it timeouts still pending; settled, the bench finds ~3.6 KB (docs/hardening.md).
    expect(memory.heapPerCallBytes).toBeLessThan(64 * 1024);
  });
});
