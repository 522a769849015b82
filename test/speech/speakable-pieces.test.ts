/**
 * Cutting a streamed answer into pieces that can be voiced on their own.
 */
import { describe, expect, it } from 'vitest';
import { SpeakablePieces, textAround } from '../../src/speech/speakable-pieces.ts';

/** Feeds `text` in chunks of `size` characters; returns the pieces, in order, as each push returned them. */
function feed(text: string, size: number, pieces = new SpeakablePieces()): string[][] {
  const out: string[][] = [];
  for (let i = 0; i < text.length; i += size) out.push(pieces.push(text.slice(i, i + size)));
  out.push(pieces.end());
  return out.filter((p) => p.length > 0);
}

describe('speakable pieces', () => {
  it('cuts at the end of each sentence as soon as the next character arrives', () => {
    const pieces = new SpeakablePieces();
    expect(pieces.push('Sure. We open at nine')).toEqual(['Sure.']);
    expect(pieces.push(' tomorrow! Anything')).toEqual(['We open at nine tomorrow!']);
    expect(pieces.push(' else?')).toEqual([]);
    expect(pieces.end()).toEqual(['Anything else?']);
  });

  it('gives back the answer exactly, whatever the chunk size', () => {
    const answer = 'Order 4711 left on Monday.  It should arrive\non Thursday, before noon. Is there anything else?';
    for (const size of [1, 2, 3, 7, 1000]) {
      expect(feed(answer, size).flat().join(' ')).toBe(answer.replace(/\s+/g, ' '));
    }
  });

  it('does not cut a decimal, an abbreviation or an initial', () => {
    expect(feed('It costs 3.5 dollars at St. Mary with Dr. J. Smith. Bye.', 1).flat()).toEqual([
      'It costs 3.5 dollars at St. Mary with Dr. J. Smith.',
      'Bye.',
    ]);
  });

  it('cuts the first piece at a clause once it has a few words, later pieces only when long', () => {
    const answer =
      'Well, the courier usually comes in the morning, and the driver calls you before arriving. ' +
      'After that, the parcel goes back to the depot near the station in the old town, where it waits for you for seven whole days, and then it is returned to us.';
    expect(feed(answer, 4).flat()).toEqual([
      'Well, the courier usually comes in the morning,',
      'and the driver calls you before arriving.',
      'After that, the parcel goes back to the depot near the station in the old town, where it waits for you for seven whole days,',
      'and then it is returned to us.',
    ]);
  });

  it('cuts between words when a piece runs past the longest allowed', () => {
    const words = Array.from({ length: 50 }, (_, i) => `w${i}`).join(' ');
    const pieces = feed(words, 5).flat();
    expect(pieces[0]!.split(' ')).toHaveLength(40);
    expect(pieces.join(' ')).toBe(words);
  });

  it('ends a sentence on a number, but does not make a list item\'s number a piece', () => {
    expect(feed('Your order is 4711. It ships today:\n1. Pack it\n2. Ship it', 2).flat()).toEqual([
      'Your order is 4711.',
      'It ships today:',
      '1. Pack it',
      '2. Ship it',
    ]);
  });

  it('treats a line break as the end of a piece', () => {
    expect(feed('Two options\n- pick up in store\n- delivery', 3).flat()).toEqual(['Two options', '- pick up in store', '- delivery']);
  });

  it('in whole mode, gives the answer as one piece at the end', () => {
    const pieces = new SpeakablePieces('whole');
    expect(pieces.push('Sure. We open at nine. ')).toEqual([]);
    expect(pieces.end()).toEqual(['Sure. We open at nine.']);
  });
});

describe('the words around a piece (previous_text, next_text)', () => {
  const pieces = ['We open at nine.', 'On Saturdays at ten.', 'Anything else?'];

  it('are the reply’s own earlier pieces and the next one when known; nothing before the first', () => {
    expect(textAround(pieces, 0)).toEqual({ nextText: 'On Saturdays at ten.' });
    expect(textAround(pieces, 1)).toEqual({ previousText: 'We open at nine.', nextText: 'Anything else?' });
    expect(textAround(pieces, 2)).toEqual({ previousText: 'We open at nine. On Saturdays at ten.' });
    expect(textAround(pieces.slice(0, 2), 1)).toEqual({ previousText: 'We open at nine.' });
  });

  it('keep the most recent whole pieces of a long reply, about 1,000 characters, at least the one just before', () => {
    const long = Array.from({ length: 30 }, (_, i) => `Sentence ${i} ${'is long '.repeat(10).trim()}.`);
    const previous = textAround(long, 29).previousText!;
    expect(previous.length).toBeLessThanOrEqual(1_000);
    expect(previous.length).toBeGreaterThan(1_000 - long[0]!.length - 1);
    expect(previous.endsWith(long[28]!)).toBe(true);
    expect(long).toContain(previous.split('. ')[0] + '.');
    const huge = ['x'.repeat(1_500), 'y.'];
    expect(textAround(huge, 1).previousText).toBe(huge[0]);
  });
});
