import { describe, expect, it } from 'vitest';
import { saysGoodbye } from '../machines/call.machine.ts';

describe('goodbye phrases', () => {
  it('ends the call on goodbye words, not on words that only contain them', () => {
    expect(saysGoodbye('OK, goodbye!')).toBe(true);
    expect(saysGoodbye("That's all, thanks")).toBe(true);
    expect(saysGoodbye('please hang up')).toBe(true);
    expect(saysGoodbye('I want to buy a ticket')).toBe(false);
    expect(saysGoodbye('byebye')).toBe(false);
  });
});
