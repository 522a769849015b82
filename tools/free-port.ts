/**
 * A TCP port free on loopback right now, for starting a server process on it
 * (the service, the Firestore emulator). Shared by the benchmark (bench/) and the
 * tests (test/support/); neither is part of the production build, which compiles
 * src/ and machines/ only.
 *
 * The port is taken from outside the kernel's ephemeral range
 * (`/proc/sys/net/ipv4/ip_local_port_range`). A process started on it binds it
 * only after it has loaded, seconds later for the Firestore emulator; meanwhile
 * every server listening on port 0 and every outgoing connection on the machine
 * draws from the ephemeral range (the emulator's own helper sockets do), so a
 * port from that range could be taken before the process binds it. Outside it,
 * only another caller of this function can collide, and the random choice makes
 * that unlikely; callers that start slow processes still retry on
 * "address in use".
 */
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';

/** Ports below this are left to well-known services. */
const LOWEST = 10_000;
const ATTEMPTS = 50;

export async function freePort(): Promise<number> {
  const range = portsOutsideEphemeralRange();
  if (range) {
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      const port = range.from + Math.floor(Math.random() * (range.to - range.from + 1));
      if (await canListen(port)) return port;
    }
  }
  return listenOnce(0);
}

/** The larger of the two stretches around the ephemeral range, or undefined if the range is unknown. */
function portsOutsideEphemeralRange(): { from: number; to: number } | undefined {
  let text: string;
  try {
    text = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8');
  } catch {
    return undefined;
  }
  const [low, high] = text.trim().split(/\s+/).map(Number);
  if (low === undefined || high === undefined || !Number.isInteger(low) || !Number.isInteger(high)) return undefined;
  const below = { from: LOWEST, to: low - 1 };
  const above = { from: high + 1, to: 65_535 };
  const size = (r: { from: number; to: number }): number => r.to - r.from + 1;
  const best = size(below) >= size(above) ? below : above;
  return size(best) >= 1_000 ? best : undefined;
}

async function canListen(port: number): Promise<boolean> {
  try {
    await listenOnce(port);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EADDRINUSE') return false;
    throw error;
  }
}

function listenOnce(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => {
        if (address && typeof address === 'object') resolve(address.port);
        else reject(new Error(`no port from a server listening on 127.0.0.1:${port}`));
      });
    });
  });
}
