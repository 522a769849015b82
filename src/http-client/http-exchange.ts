/**
 * The service's own requests to the agent and to ElevenLabs: one POST, answered
 * with the status, the headers and the body as a Node stream, over `node:http` or
 * `node:https` with a keep-alive connection pool per service.
 *
 * Not `fetch`: every caller's turn makes one agent request and a few ElevenLabs
 * requests on its critical path, and the agent's answer arrives as dozens of small
 * SSE chunks. Measured on loopback against `fetch` (Node 24's undici, also
 * keep-alive), `node bench/http-client.ts` at commit 6c4c9e3: `node:http` took about half the time
 * from the call to the answer read (p50 0.34-0.37 ms against 0.62-0.64 ms, p99
 * 1.0-1.4 against 3.1-4.8 ms) and 40 % less CPU per SSE chunk (22-25 µs against
 * 41 µs, 200 streams at once): fetch's web streams add promises and allocations
 * to every chunk. In the service, CPU per turn fell from 12.0 to 7.3 ms
 * (docs/performance.md).
 *
 * A request that was written on a reused keep-alive connection the server had
 * just closed fails with ECONNRESET before any answer: it is sent once more on a
 * new connection, as Node's documentation recommends (`request.reusedSocket`).
 * Nothing else is retried here. Redirects are not followed (a POST should not
 * be): a 3xx is reported as the status it is, so the operator sets the final URL.
 *
 * @see https://nodejs.org/api/http.html#requestreusedsocket
 */
import http, { type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import https from 'node:https';

export interface HttpAnswer {
  status: number;
  headers: IncomingHttpHeaders;
  /** Fails with the abort reason's error if `signal` aborts while it is read. */
  body: IncomingMessage;
}

export class HttpClient {
  readonly #http = new http.Agent({ keepAlive: true });
  readonly #https = new https.Agent({ keepAlive: true });

  /** POSTs `body` to `url`; resolves once the answer's headers are in. Aborting `signal` destroys the request and the answer's body. */
  post(url: URL, headers: Record<string, string>, body: string, signal: AbortSignal): Promise<HttpAnswer> {
    return this.#send(url, headers, Buffer.from(body, 'utf8'), signal, true);
  }

  /** Closes the idle connections (the service is shutting down). */
  close(): void {
    this.#http.destroy();
    this.#https.destroy();
  }

  #send(url: URL, headers: Record<string, string>, body: Buffer, signal: AbortSignal, mayRetry: boolean): Promise<HttpAnswer> {
    const secure = url.protocol === 'https:';
    return new Promise<HttpAnswer>((resolve, reject) => {
      if (signal.aborted) {
        reject(abortError(signal));
        return;
      }
      const request = (secure ? https : http).request(url, {
        method: 'POST',
        agent: secure ? this.#https : this.#http,
        headers: { ...headers, 'content-length': String(body.length) },
      });
      let answered: IncomingMessage | undefined;
      const onAbort = (): void => {
        const error = abortError(signal);
        request.destroy(error);
        answered?.destroy(error);
      };
      const release = (): void => signal.removeEventListener('abort', onAbort);
      signal.addEventListener('abort', onAbort, { once: true });
      // `on`, not `once`: a request can report a second error (its socket's) after the first.
      request.on('error', (error: NodeJS.ErrnoException) => {
        if (answered) return; // the body's reader sees it
        release();
        if (mayRetry && !signal.aborted && request.reusedSocket && error.code === 'ECONNRESET') {
          resolve(this.#send(url, headers, body, signal, false));
          return;
        }
        reject(signal.aborted ? abortError(signal) : error);
      });
      request.once('response', (response) => {
        answered = response;
        response.once('close', release);
        // Whoever reads the body sees its errors through the stream; one that comes
        // after the reader has let go (an abort, a reset) has nobody left to tell.
        response.on('error', () => {});
        resolve({ status: response.statusCode ?? 0, headers: response.headers, body: response });
      });
      request.end(body);
    });
  }
}

/**
 * `text` as a URL this client can post to. For the clients to call when they are
 * made, so that a wrong setting fails at boot rather than on a caller's turn.
 * `what` names the setting in the message, e.g. "the agent URI".
 */
export function httpUrl(text: string, what: string): URL {
  const url = new URL(text);
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new TypeError(`${what} must be http or https, not ${url.protocol}`);
  return url;
}

/** The error a reader sees when `signal` stopped the exchange: its reason when that is an error. */
function abortError(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  return reason instanceof Error ? reason : new DOMException('This operation was aborted', 'AbortError');
}

/**
 * Reads the start of an answer's body, no further than needed: error bodies from
 * outside services are for messages, and a hostile or broken server must not make
 * us read (or buffer) without bound. The rest is discarded with the connection.
 */
export async function readBodyPrefix(body: IncomingMessage, maxChars: number): Promise<string> {
  let text = '';
  body.setEncoding('utf8');
  try {
    for await (const chunk of body as AsyncIterable<string>) {
      text += chunk;
      if (text.length >= maxChars) break;
    }
  } catch {
    // A body that cannot be read only loses detail: the status tells what went wrong.
  } finally {
    body.destroy();
  }
  return text;
}
