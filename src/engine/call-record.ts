/**
 * The record projection: what the store keeps of a call for people to read (the
 * admin console, analytics), derived from the machine's snapshot at every
 * commit. It is never read back into the machine.
 */
import type { SnapshotFrom } from 'xstate';
import { stateName, type CallMachine } from '../../machines/call.machine.ts';
import type { CallRecord } from '../store/call-store.ts';

export function recordOf(snapshot: SnapshotFrom<CallMachine>, worker?: CallRecord['worker']): CallRecord {
  const c = snapshot.context;
  const record: CallRecord = {
    callSid: c.callSid,
    from: c.from,
    to: c.to,
    startedAt: c.startedAt,
    status: c.finalStatus ?? 'in-progress',
    state: stateName(snapshot.value),
    turns: c.turns,
    path: c.path,
  };
  if (c.endedAt !== undefined) record.endedAt = c.endedAt;
  if (c.durationSec !== undefined) record.durationSec = c.durationSec;
  if (c.endReason !== undefined) record.endReason = c.endReason;
  if (c.lastError !== undefined) record.lastError = c.lastError;
  if (worker) record.worker = worker;
  return record;
}
