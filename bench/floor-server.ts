/**
 * The least a server can do for the benchmark's calls, as a yardstick for the
 * service's own time (`node bench/run.ts --phases load --service-entry floor`).
 *
 * It speaks the same TwiML to the same simulated Twilio, asks the same fake agent
 * and fake ElevenLabs the same way (keep-alive node:http, eventsource-parser, the
 * service's own piece cutter, one synthesis at a time per call with the text before
 * it as `previous_text`; the service also sends `next_text` when it is already
 * known), and answers `/speech-result` with the first piece once it is voiced
 * and `/continue` with the rest, so the benchmark measures it exactly as it measures
 * the service. What it leaves out is everything that makes the service a product:
 * no store (state in a Map, nothing survives a restart), no state machine, no
 * Twilio signature check, no rate limits, no Fastify, no holds, no failure handling
 * beyond a 500 or a spoken apology, no idempotency, TwiML written as strings. Whatever own time it
 * still has is what this machine charges for the three crossings of the event loop
 * a streamed answer needs (the webhook, the agent's text, the audio), before any of
 * the service's work. Never used outside the benchmark.
 */
import { createServer, request as httpRequest, Agent, type IncomingMessage, type ServerResponse } from 'node:http';
import { createParser } from 'eventsource-parser';
import { SpeakablePieces } from '../src/speech/speakable-pieces.ts';

const env = (name: string): string => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required`);
  return value;
};
const base = env('PUBLIC_BASE_URL').replace(/\/+$/, '');
const agentUrl = new URL(`${env('KOOZIE_AGENT_URI').replace(/\/+$/, '')}/chat`);
const format = process.env.ELEVEN_OUTPUT_FORMAT ?? 'mp3_44100_128';
const ttsUrl = new URL(
  `${env('ELEVENLABS_BASE_URL').replace(/\/+$/, '')}/v1/text-to-speech/${env('ELEVEN_VOICE_ID')}/stream?output_format=${format}`,
);
const ttsKey = env('ELEVENLABS_API_KEY');
const pool = new Agent({ keepAlive: true });
/** A μ-law answer is served as WAV, as the service does; the header's content does not matter here. */
const WAV_HEADER = format.startsWith('ulaw') ? Buffer.alloc(58) : Buffer.alloc(0);
const audioType = format.startsWith('ulaw') ? 'audio/wav' : 'audio/mpeg';

interface Turn {
  index: number;
  /** The turn is over: the agent's answer ended (or failed) and every piece was voiced (or failed). */
  finished: boolean;
  pieces: Array<{ text: string; audio?: Promise<Buffer> }>;
  done: Promise<void>;
  /** Resolves when a piece is added or the answer ends. */
  changed: Promise<void>;
}
interface Call {
  history: Array<{ role: 'user' | 'assistant'; content: string }>;
  turns: Turn[];
  audio: Map<string, Buffer>;
}
const calls = new Map<string, Call>();

function post(url: URL, headers: Record<string, string>, body: string): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: 'POST', agent: pool, headers: { ...headers, 'content-length': Buffer.byteLength(body) } }, resolve);
    req.on('error', reject);
    req.end(body);
  });
}

async function readAll(stream: IncomingMessage): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of stream) parts.push(part as Buffer);
  return Buffer.concat(parts);
}

function synthesise(text: string, previousText: string): Promise<Buffer> {
  const body = JSON.stringify({ text, model_id: 'eleven_flash_v2_5', previous_text: previousText });
  return post(ttsUrl, { 'content-type': 'application/json', 'xi-api-key': ttsKey }, body).then(readAll);
}

/** Streams the agent's answer into pieces, voicing each one as soon as it is complete, one at a time. */
function startTurn(callSid: string, call: Call, message: string): Turn {
  let signal!: () => void;
  const turn: Turn = { index: call.turns.length, finished: false, pieces: [], done: Promise.resolve(), changed: new Promise((r) => (signal = r)) };
  const changed = () => {
    const previous = signal;
    turn.changed = new Promise((r) => (signal = r));
    previous();
  };
  let voicing: Promise<unknown> = Promise.resolve();
  const add = (text: string) => {
    const piece: Turn['pieces'][number] = { text };
    const index = turn.pieces.push(piece) - 1;
    const previousText = turn.pieces[index - 1]?.text ?? message;
    piece.audio = voicing.then(() => synthesise(text, previousText));
    voicing = piece.audio.catch(() => undefined);
    changed();
  };
  turn.done = (async () => {
    const response = await post(agentUrl, { 'content-type': 'application/json', accept: 'text/event-stream' }, JSON.stringify({ message, history: call.history, callSid }));
    const cutter = new SpeakablePieces();
    const texts: string[] = [];
    const parser = createParser({
      onEvent: (event) => {
        const text = (JSON.parse(event.data) as { text?: string }).text ?? '';
        texts.push(text);
        for (const piece of cutter.push(text)) add(piece);
      },
    });
    response.setEncoding('utf8');
    for await (const chunk of response) parser.feed(chunk as string);
    for (const piece of cutter.end()) add(piece);
    call.history.push({ role: 'user', content: message }, { role: 'assistant', content: texts.join('') });
    await voicing;
    changed();
  })();
  turn.done.catch(() => undefined).finally(() => {
    turn.finished = true;
    changed();
  });
  call.turns.push(turn);
  return turn;
}

const twiml = (inner: string) => `<?xml version="1.0" encoding="UTF-8"?><Response>${inner}</Response>`;
const gather = (inner: string) => `<Gather input="speech" action="${base}/speech-result" method="POST" speechTimeout="auto">${inner}</Gather>`;
const play = (callSid: string, key: string) => `<Play>${base}/audio/call/${callSid}/${key}</Play>`;
const keyOf = (turn: number, piece: number) => (piece === 0 ? `t${turn}` : `t${turn}p${piece}`);

async function readForm(req: IncomingMessage): Promise<URLSearchParams> {
  return new URLSearchParams((await readAll(req)).toString('utf8'));
}

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = (req.url ?? '/').split('?')[0]!;
  const send = (body: string, type = 'text/xml'): void => {
    res.writeHead(200, { 'content-type': type, 'content-length': Buffer.byteLength(body) }).end(body);
  };
  if (req.method === 'GET' && path === '/healthz') return send('ok', 'text/plain');
  if (req.method === 'GET' && path.startsWith('/audio/call/')) {
    const [, , , callSid, key] = path.split('/');
    const audio = calls.get(callSid!)?.audio.get(key!);
    if (!audio) return void res.writeHead(404).end();
    return void res.writeHead(200, { 'content-type': audioType, 'content-length': audio.length }).end(audio);
  }
  if (req.method !== 'POST') return void res.writeHead(405).end();
  const form = await readForm(req);
  const callSid = form.get('CallSid') ?? '';
  switch (path) {
    case '/voice':
      calls.set(callSid, { history: [], turns: [], audio: new Map() });
      return send(twiml(gather('<Say>Hello, how can I help?</Say>')));
    case '/call-status':
      calls.delete(callSid);
      return send(twiml(''));
    case '/speech-result': {
      const call = calls.get(callSid);
      const words = form.get('SpeechResult') ?? '';
      if (!call) return send(twiml('<Hangup/>'));
      if (/goodbye/i.test(words)) return send(twiml('<Say>Goodbye.</Say><Hangup/>'));
      const turn = startTurn(callSid, call, words);
      while (turn.pieces.length === 0 && !turn.finished) await turn.changed;
      if (turn.pieces.length === 0) return send(twiml(gather('<Say>Sorry, something went wrong.</Say>')));
      call.audio.set(keyOf(turn.index, 0), Buffer.concat([WAV_HEADER, await turn.pieces[0]!.audio!]));
      return send(twiml(`${play(callSid, keyOf(turn.index, 0))}<Redirect method="POST">${base}/continue</Redirect>`));
    }
    case '/continue': {
      const call = calls.get(callSid);
      const turn = call?.turns.at(-1);
      if (!call || !turn) return send(twiml('<Hangup/>'));
      await turn.done;
      let plays = '';
      for (let k = 1; k < turn.pieces.length; k++) {
        call.audio.set(keyOf(turn.index, k), Buffer.concat([WAV_HEADER, await turn.pieces[k]!.audio!]));
        plays += play(callSid, keyOf(turn.index, k));
      }
      return send(twiml(gather(plays)));
    }
    default:
      return void res.writeHead(404).end();
  }
}

const server = createServer((req, res) => {
  handle(req, res).catch((error: unknown) => {
    console.error(error);
    if (!res.headersSent) res.writeHead(500).end();
  });
});
server.keepAliveTimeout = 65_000;
server.listen(Number(process.env.PORT ?? 3000), process.env.HOST ?? '127.0.0.1');
process.on('SIGTERM', () => server.close(() => process.exit(0)));
