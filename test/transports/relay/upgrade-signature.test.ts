import { getExpectedTwilioSignature } from 'twilio/lib/webhooks/webhooks.js';
import { describe, expect, it } from 'vitest';
import { verifyRelayUpgrade } from '../../../src/transports/relay/upgrade-signature.ts';

const TOKEN = 'test-auth-token';
const URL_OPENED = 'wss://voice.example.com/relay?resume=1';

describe('the ConversationRelay upgrade signature', () => {
  it('accepts the signature Twilio computes over the public wss:// URL and no parameters', () => {
    const signature = getExpectedTwilioSignature(TOKEN, URL_OPENED, {});
    expect(verifyRelayUpgrade(TOKEN, URL_OPENED, { 'x-twilio-signature': signature })).toBe(true);
  });

  it('refuses a missing, forged or repeated signature', () => {
    const signature = getExpectedTwilioSignature(TOKEN, URL_OPENED, {});
    expect(verifyRelayUpgrade(TOKEN, URL_OPENED, {})).toBe(false);
    expect(verifyRelayUpgrade(TOKEN, URL_OPENED, { 'x-twilio-signature': 'forged' })).toBe(false);
    expect(verifyRelayUpgrade(TOKEN, URL_OPENED, { 'x-twilio-signature': [signature, signature] as unknown as string })).toBe(false);
  });

  it('refuses a signature made with another auth token, or for another URL or query', () => {
    expect(verifyRelayUpgrade(TOKEN, URL_OPENED, { 'x-twilio-signature': getExpectedTwilioSignature('other-token', URL_OPENED, {}) })).toBe(false);
    expect(verifyRelayUpgrade(TOKEN, URL_OPENED, { 'x-twilio-signature': getExpectedTwilioSignature(TOKEN, 'wss://voice.example.com/relay', {}) })).toBe(false);
    expect(verifyRelayUpgrade(TOKEN, URL_OPENED, { 'x-twilio-signature': getExpectedTwilioSignature(TOKEN, 'wss://attacker.example/relay?resume=1', {}) })).toBe(false);
  });
});
