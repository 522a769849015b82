/**
 * What every loopback fake shares: a real HTTP server on 127.0.0.1 and a free
 * port, whose `close()` also ends the connections still open (a fake told to
 * hang keeps its response open for good, and would hold the close forever).
 * A handler that throws destroys its response, as a broken server would.
 *
 * @see ./agent-server.ts
 * @see ./elevenlabs-server.ts
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface LoopbackServer {
  /** `http://127.0.0.1:<port>`. */
  url: string;
  /** How many connections clients have opened so far. */
  connections(): number;
  /** Stops listening and destroys open connections, hanging ones included. */
  close(): Promise<void>;
}

export async function startLoopbackServer(handle: (req: IncomingMessage, res: ServerResponse) => Promise<void>): Promise<LoopbackServer> {
  const server = createServer((req, res) => {
    handle(req, res).catch(() => res.destroy());
  });
  let connections = 0;
  server.on('connection', () => {
    connections += 1;
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    connections: () => connections,
    close() {
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}

/** The whole request body, as UTF-8 text. */
export async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
