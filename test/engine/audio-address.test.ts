/**
 * Audio addressing, the one module that names a reply piece's audio: its key
 * (`t<turn>`, `t<turn>p<n>`), its voice-library id, the path Twilio fetches, and
 * the text a key speaks (found again in the stored turns by an instance that did
 * not voice it).
 */
import { describe, expect, it } from 'vitest';
import { replyKey, type Turn } from '../../machines/call.machine.ts';
import {
  AUDIO_ROUTES,
  parsePieceKey,
  phraseAudioPath,
  pieceKey,
  pieceText,
  replyAudioId,
  replyAudioPath,
} from '../../src/engine/audio-address.ts';

const CALL_SID = 'CA0123456789abcdef0123456789abcdef';

/** Fills a Fastify route pattern's `:params`. */
function route(pattern: string, params: Record<string, string>): string {
  return pattern.replace(/:(\w+)/g, (_, name: string) => params[name] ?? `:${name}`);
}

describe('a reply piece key', () => {
  it("is the machine's reply key for the first piece, and t<turn>p<n> for the n-th after it", () => {
    expect(pieceKey(0, 0)).toBe(replyKey(0));
    expect(pieceKey(7, 0)).toBe('t7');
    expect(pieceKey(7, 1)).toBe('t7p1');
    expect(pieceKey(12, 30)).toBe('t12p30');
  });

  it('parses back to the turn and piece it was built from', () => {
    for (const [turn, piece] of [[0, 0], [0, 1], [3, 2], [999_999, 9_999]] as const) {
      expect(parsePieceKey(pieceKey(turn, piece))).toStrictEqual({ turn, piece });
    }
  });

  it('parses nothing else: keys come from URLs, so they are bounded', () => {
    for (const key of ['', 't', 'p1', 'x3', 't-1', 't1p', 't1p0', 't1p01', 't1234567', 't1p10000', 't1p1p2', 'T1', 't1 ', 't1/p1', '../t1']) {
      expect(parsePieceKey(key), key).toBeUndefined();
    }
  });
});

describe('where audio lives', () => {
  it("is the call's id and key in the voice library, and the audio route's path for Twilio", () => {
    expect(replyAudioId(CALL_SID, 't2p1')).toBe(`${CALL_SID}/t2p1`);
    expect(replyAudioPath(CALL_SID, 't2p1')).toBe(`/audio/call/${CALL_SID}/t2p1`);
    expect(replyAudioPath(CALL_SID, 't2p1')).toBe(route(AUDIO_ROUTES.reply, { callSid: CALL_SID, key: 't2p1' }));
    expect(phraseAudioPath('hold')).toBe('/audio/phrase/hold');
    expect(phraseAudioPath('hold')).toBe(route(AUDIO_ROUTES.phrase, { name: 'hold' }));
  });
});

describe('the text a key speaks', () => {
  const turns: Array<Pick<Turn, 'index' | 'reply' | 'pieces'>> = [
    { index: 0, reply: 'We open at nine.' },
    { index: 1, reply: 'First. Second. Third.', pieces: ['First.', 'Second.', 'Third.'] },
    { index: 2 },
  ];

  it('is the whole reply of a turn voiced in one piece', () => {
    expect(pieceText(turns, 't0')).toStrictEqual({ text: 'We open at nine.' });
  });

  it('is the piece of a turn voiced in pieces, with the reply\u2019s earlier pieces as previous text and the next one as next text', () => {
    expect(pieceText(turns, 't1')).toStrictEqual({ text: 'First.', nextText: 'Second.' });
    expect(pieceText(turns, 't1p1')).toStrictEqual({ text: 'Second.', previousText: 'First.', nextText: 'Third.' });
    expect(pieceText(turns, 't1p2')).toStrictEqual({ text: 'Third.', previousText: 'First. Second.' });
  });

  it('is nothing for a piece, turn or reply that does not exist, or a key that is not one', () => {
    expect(pieceText(turns, 't0p1')).toBeUndefined();
    expect(pieceText(turns, 't1p3')).toBeUndefined();
    expect(pieceText(turns, 't2')).toBeUndefined();
    expect(pieceText(turns, 't9')).toBeUndefined();
    expect(pieceText(turns, 'greeting')).toBeUndefined();
    expect(pieceText([{ index: 0, reply: '' }], 't0')).toBeUndefined();
  });
});
