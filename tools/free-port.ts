/**
 * A TCP port free on loopback right now, for starting a server process on it
 * (the service, the Firestore emulator). Shared by the benchmark (bench/) and the
 * tests (test/support/); neither is part of the production build, which compiles
 * src/ and machines/ only.
 */
import { createServer } from 'node:net';

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => {
        if (address && typeof address === 'object') resolve(address.port);
        else reject(new Error('no port from a server listening on 127.0.0.1:0'));
      });
    });
  });
}
