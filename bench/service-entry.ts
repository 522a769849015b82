/**
 * The service as the benchmark runs it, in a process of its own: what src/server.ts
 * does (configuration from the environment, `createService`, listen, the fixed
 * phrases synthesised in the background, SIGTERM closes it, as does the benchmark
 * going away), plus what only the benchmark asks for:
 *
 * - `--reply-pieces whole`: every reply voiced only once the agent has finished,
 *   as the service worked before it streamed replies: the baseline first audio is
 *   compared with. Not a setting of the service (`ServiceOverrides.replyPieces`).
 * - on the IPC channel, `{ type: 'memory' }`: a full garbage collection (node runs
 *   with `--expose-gc`), then `{ type: 'memory', ...process.memoryUsage() }`.
 */
import { parseArgs } from 'node:util';
import { loadConfig } from '../src/config.ts';
import { createLogger } from '../src/logger.ts';
import { createService } from '../src/service.ts';

const { values } = parseArgs({ options: { 'reply-pieces': { type: 'string', default: 'sentences' } } });
const replyPieces = values['reply-pieces'];
if (replyPieces !== 'sentences' && replyPieces !== 'whole') throw new Error(`--reply-pieces must be sentences or whole, got ${replyPieces}`);

const config = loadConfig(process.env);
const service = await createService(config, createLogger(config.logLevel), { replyPieces });
await service.app.listen({ port: config.port, host: config.host });
void service.warmUp();

process.on('message', (message: { type?: string }) => {
  if (message.type !== 'memory') return;
  (globalThis as { gc?: () => void }).gc?.();
  process.send!({ type: 'memory', ...process.memoryUsage() });
});
let closing: Promise<void> | undefined;
const close = () => void (closing ??= service.close().finally(() => process.exit(0)));
process.once('SIGTERM', close);
// The benchmark gone (a crash): no service is left behind.
process.once('disconnect', close);
