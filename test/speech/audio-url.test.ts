import { describe, expect, it } from 'vitest';
import { createAudioUrlSigner } from '../../src/speech/audio-url.ts';

describe('signed audio URLs', () => {
  it('accept their own signature until they expire, then refuse', () => {
    let now = 1_700_000_000_000;
    const signer = createAudioUrlSigner({ secret: 's3cret', ttlSec: 60, now: () => now });
    const signed = new URL(signer.sign('/audio/phrase/greeting'), 'https://x.example');
    const exp = signed.searchParams.get('exp') ?? undefined;
    const sig = signed.searchParams.get('sig') ?? undefined;
    expect(signer.verify('/audio/phrase/greeting', exp, sig)).toBe('ok');
    now += 61_000;
    expect(signer.verify('/audio/phrase/greeting', exp, sig)).toBe('expired');
  });

  it('refuse another path, another expiry, another secret or garbage', () => {
    const signer = createAudioUrlSigner({ secret: 's3cret', ttlSec: 60 });
    const signed = new URL(signer.sign('/audio/call/CA1/t0'), 'https://x.example');
    const exp = signed.searchParams.get('exp')!;
    const sig = signed.searchParams.get('sig')!;
    expect(signer.verify('/audio/call/CA1/t1', exp, sig)).toBe('invalid');
    expect(signer.verify('/audio/call/CA1/t0', String(Number(exp) + 1), sig)).toBe('invalid');
    expect(createAudioUrlSigner({ secret: 'other', ttlSec: 60 }).verify('/audio/call/CA1/t0', exp, sig)).toBe('invalid');
    expect(signer.verify('/audio/call/CA1/t0', undefined, sig)).toBe('invalid');
    expect(signer.verify('/audio/call/CA1/t0', exp, 'x'.repeat(43))).toBe('invalid');
    expect(signer.verify('/audio/call/CA1/t0', '1e9', sig)).toBe('invalid');
  });
});
