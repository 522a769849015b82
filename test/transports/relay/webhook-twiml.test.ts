import { describe, expect, it } from 'vitest';
import { initialTransition } from 'xstate';
import { callMachine, stateName, type CallContext } from '../../../machines/call.machine.ts';
import type { CallView } from '../../../src/engine/call-engine.ts';
import { renderResumeWait } from '../../../src/transports/relay/webhook-twiml.ts';

function waitingView(filler: CallContext['filler']): CallView {
  const [snapshot] = initialTransition(callMachine, { callSid: `CA${'1'.repeat(32)}`, from: '+15550100001', to: '+15550100002', at: 0, agentTimeoutMs: 5_000, replyDelivery: 'streamed' });
  return { state: stateName(snapshot.value), context: { ...snapshot.context, filler }, pending: { type: 'RECONNECTED', at: 1 } };
}

describe('the action URL’s wait while another instance holds the turn', () => {
  it('says the machine’s filler, then sends Twilio back to the action URL with RECONNECTED still to apply', () => {
    expect(renderResumeWait(waitingView('hold'), 'https://voice.example.test', {})).toBe(
      '<?xml version="1.0" encoding="UTF-8"?><Response><Say>One moment.</Say>' +
        '<Redirect method="POST">https://voice.example.test/relay-ended</Redirect></Response>',
    );
    expect(renderResumeWait(waitingView('pause'), 'https://voice.example.test', { sayVoice: 'Polly.Joanna' })).toBe(
      '<?xml version="1.0" encoding="UTF-8"?><Response><Pause length="1"/>' +
        '<Redirect method="POST">https://voice.example.test/relay-ended</Redirect></Response>',
    );
    expect(renderResumeWait(waitingView('hold'), 'https://voice.example.test', { sayVoice: 'Polly.Joanna', sayLanguage: 'en-GB' })).toContain(
      '<Say voice="Polly.Joanna" language="en-GB">One moment.</Say>',
    );
  });
});
