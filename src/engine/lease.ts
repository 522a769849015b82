/**
 * The lease: which instance is doing a call's work right now. While an actor works
 * (the agent answering, speech being voiced, the rest of a reply being written),
 * its instance records itself as the call's `worker` in the stored record and
 * renews that every LEASE_RENEW_MS. Another instance that gets a request for the
 * call meanwhile waits for the owner's result instead of doing the work twice; a
 * lease not renewed for LEASE_MS was left by a process that died, and the work is
 * adopted (restoring the snapshot restarts the invoked actor).
 */
import type { SnapshotFrom } from 'xstate';
import type { CallMachine } from '../../machines/call.machine.ts';
import type { CallRecord } from '../store/call-store.ts';

/** How long a worker's claim on a turn holds without renewal, and how often it renews. */
export const LEASE_MS = 4_000;
export const LEASE_RENEW_MS = 1_500;

type CallSnapshot = SnapshotFrom<CallMachine>;
export type Worker = NonNullable<CallRecord['worker']>;

/** Working states (agent, speech) are waited for; renderable ones end a step. */
export function isWorking(snapshot: CallSnapshot): boolean {
  return snapshot.status === 'active' && !snapshot.hasTag('renderable');
}

/** A renderable state whose invoked actor is still at work (the rest of a reply being written). */
export function busyInBackground(snapshot: CallSnapshot): boolean {
  if (snapshot.status !== 'active' || !snapshot.hasTag('renderable')) return false;
  return Object.values(snapshot.children).some((child) => child?.getSnapshot().status === 'active');
}

/** Work is under way for this call in this process: its instance holds the call's lease. */
export function needsLease(snapshot: CallSnapshot): boolean {
  return isWorking(snapshot) || busyInBackground(snapshot);
}

/** The lease this instance writes with a snapshot that needs one. */
export function leaseFor(instance: string, now: number): Worker {
  return { instance, until: now + LEASE_MS };
}

/** Another instance holds a live lease on the call. */
export function heldElsewhere(worker: Worker | undefined, instance: string, now: number): boolean {
  return worker !== undefined && worker.instance !== instance && worker.until > now;
}
