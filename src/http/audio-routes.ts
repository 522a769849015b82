/**
 * The signed audio Twilio's `<Play>` fetches: fixed phrases and the pieces of
 * replies (src/engine/audio-address.ts names them). Usually the instance that
 * voiced a piece serves it from memory; another instance voices it again from the
 * call's stored turns. Served only once complete and known good: an error body
 * from the speech service is never sent to Twilio as audio.
 */
import { createHash } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { PHRASES, type PhraseName } from '../../machines/call.machine.ts';
import { AUDIO_ROUTES, phraseAudioPath, pieceText, replyAudioId, replyAudioPath } from '../engine/audio-address.ts';
import type { AudioUrlSigner } from '../speech/audio-url.ts';
import type { SynthesisedAudio } from '../speech/speech.ts';
import type { VoiceLibrary } from '../speech/voice-library.ts';
import type { CallStore } from '../store/call-store.ts';

export interface AudioRoutesOptions {
  store: CallStore;
  voice: VoiceLibrary | undefined;
  audioUrls: AudioUrlSigner;
  audioUrlTtlSec: number;
}

interface AudioQuery {
  exp?: unknown;
  sig?: unknown;
}

export async function audioRoutes(app: FastifyInstance, options: AudioRoutesOptions): Promise<void> {
  const { store, voice, audioUrls, audioUrlTtlSec } = options;

  app.get<{ Params: { name: string }; Querystring: AudioQuery }>(AUDIO_ROUTES.phrase, async (request, reply) => {
    const name = request.params.name;
    if (!checkSignature(request, reply, phraseAudioPath(name))) return reply;
    if (!voice || !Object.hasOwn(PHRASES, name)) return reply.code(404).send('Not Found');
    return sendAudio(reply, () => voice.phrase(name, PHRASES[name as PhraseName]), audioUrlTtlSec);
  });

  app.get<{ Params: { callSid: string; key: string }; Querystring: AudioQuery }>(AUDIO_ROUTES.reply, async (request, reply) => {
    const { callSid, key } = request.params;
    if (!checkSignature(request, reply, replyAudioPath(callSid, key))) return reply;
    const id = replyAudioId(callSid, key);
    // Usually this instance voiced it moments ago: no store read needed.
    const ready = voice?.replyIfReady(id);
    if (ready) return sendAudio(reply, () => Promise.resolve(ready), audioUrlTtlSec);
    const stored = voice ? await store.load(callSid) : null;
    const spoken = stored ? pieceText(stored.record.turns, key) : undefined;
    if (!voice || !spoken) return reply.code(404).send('Not Found');
    return sendAudio(reply, () => voice.replyPiece(id, spoken), audioUrlTtlSec);
  });

  function checkSignature(request: FastifyRequest<{ Querystring: AudioQuery }>, reply: FastifyReply, path: string) {
    const verdict = audioUrls.verify(path, str(request.query.exp), str(request.query.sig));
    if (verdict === 'ok') return true;
    void reply.code(403).type('text/plain').send(verdict === 'expired' ? 'Forbidden: audio link expired' : 'Forbidden: invalid audio link');
    return false;
  }
}

function str(value: unknown): string | undefined {
  return typeof value === 'string' ? value : undefined;
}

/** Audio is cached and fetched again (by Twilio, by other pieces): hash it once. */
const etags = new WeakMap<SynthesisedAudio, string>();
function etagOf(audio: SynthesisedAudio): string {
  let etag = etags.get(audio);
  if (etag === undefined) {
    etag = `"${createHash('sha256').update(audio.bytes).digest('base64url').slice(0, 27)}"`;
    etags.set(audio, etag);
  }
  return etag;
}

async function sendAudio(reply: FastifyReply, synthesise: () => Promise<SynthesisedAudio>, ttlSec: number) {
  let audio: SynthesisedAudio;
  try {
    audio = await synthesise();
  } catch (error) {
    reply.log.warn({ err: error }, 'audio could not be synthesised');
    return reply.code(502).type('text/plain').send('Bad Gateway: speech synthesis failed');
  }
  const etag = etagOf(audio);
  if (reply.request.headers['if-none-match'] === etag) return reply.code(304).send();
  return reply
    .header('content-type', audio.contentType)
    .header('cache-control', `private, max-age=${ttlSec}`)
    .header('etag', etag)
    .send(audio.bytes);
}
