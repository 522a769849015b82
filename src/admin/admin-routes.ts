/**
 * The admin console, under `/admin`: a page showing recent calls, the call
 * machine's diagram and a chosen call's path through it, and the JSON API behind
 * it. This is where the console grows.
 *
 * Access: every `/admin` request needs `Authorization: Bearer <ADMIN_TOKEN>`,
 * checked in constant time by one `onRequest` hook (401 otherwise). With no
 * ADMIN_TOKEN configured the console is off: every `/admin` request is a 404 that
 * says so. A browser does not send a Bearer header on its own: put the console
 * behind a proxy that adds it (e.g. an identity-aware proxy), or use a header
 * extension; the page itself makes no further requests (server-rendered, no
 * script), so the one authenticated request is all it needs.
 *
 * Routes:
 * - `GET /admin`                      the page; `?call=CA…` selects a call, `?number=&limit=` filter the list
 * - `GET /admin/api/calls`            `{ calls }`: summaries (no turns or path; `turnCount`), newest first; `?since&until` (ms or ISO 8601), `number`, `limit` (1–500, default 50)
 * - `GET /admin/api/calls/:callSid`   the stored call record
 *
 * @see ./admin-page.ts
 * @see https://fastify.dev/docs/latest/Reference/Hooks/#onrequest
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { callMachine } from '../../machines/call.machine.ts';
import { machineGraph } from '../diagram/machine-graph.ts';
import type { CallStore, RecordQuery } from '../store/call-store.ts';
import { renderAdminPage } from './admin-page.ts';

export interface AdminOptions {
  store: CallStore;
  /** Undefined: the console is off (every /admin request is a 404). */
  adminToken: string | undefined;
  /** The diagram SVG written by `npm run diagram`. */
  diagramSvgPath?: string;
  now?: () => number;
}

/** Next to the sources: docs/diagram/ in the repository; dist/docs/diagram/ in a build. */
export const DEFAULT_DIAGRAM_SVG = fileURLToPath(new URL('../../docs/diagram/call-machine.svg', import.meta.url));

const CALL_SID = /^CA[0-9a-fA-F]{32}$/;
/** What From/To may hold after the webhook parser cleaned them (E.164, client:…, sip identities). */
const NUMBER = /^[\w+:@.-]{1,64}$/;
const DEFAULT_LIMIT = 50;
const MAX_LIMIT = 500;

const PAGE_HEADERS = {
  'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-store',
};

class AdminQueryError extends Error {
  override readonly name = 'AdminQueryError';
}

export async function adminRoutes(app: FastifyInstance, options: AdminOptions): Promise<void> {
  const now = options.now ?? Date.now;
  const expected = options.adminToken === undefined ? undefined : digest(options.adminToken);
  const graph = machineGraph(callMachine);
  const svg = await readFile(options.diagramSvgPath ?? DEFAULT_DIAGRAM_SVG, 'utf8').catch(() => {
    app.log.warn({ path: options.diagramSvgPath ?? DEFAULT_DIAGRAM_SVG }, 'admin console: the call machine diagram is missing; the page shows calls without it');
    return undefined;
  });

  app.addHook('onRequest', async (request, reply) => {
    void reply.headers({ 'cache-control': 'no-store' });
    if (expected === undefined) {
      return reply.code(404).type('text/plain').send('Not Found: the admin console is off (ADMIN_TOKEN is not set)');
    }
    if (!authorised(request.headers.authorization, expected)) {
      request.log.warn({ path: request.url.split('?')[0] }, 'admin request without a valid token');
      return reply
        .code(401)
        .header('www-authenticate', 'Bearer realm="admin"')
        .type('text/plain')
        .send('Unauthorized: send Authorization: Bearer <ADMIN_TOKEN>');
    }
  });

  app.setErrorHandler((error: Error & { statusCode?: number }, request, reply) => {
    if (error instanceof AdminQueryError) return reply.code(400).type('text/plain').send(`Bad Request: ${error.message}`);
    const status = error.statusCode ?? 500;
    if (status < 500) return reply.code(status).type('text/plain').send(error.message);
    request.log.error({ err: error, path: request.url.split('?')[0] }, 'admin request failed');
    return reply.code(500).type('text/plain').send('Internal Server Error');
  });

  // Unknown /admin paths pass the same hook: without the token nobody learns which exist.
  app.setNotFoundHandler((_request, reply) => reply.code(404).type('text/plain').send('Not Found'));

  app.get<{ Querystring: Record<string, unknown> }>('/', async (request, reply) => {
    const query = request.query;
    const callSid = optionalString(query.call);
    if (callSid !== undefined && !CALL_SID.test(callSid)) throw new AdminQueryError('call must be a CallSid (CA followed by 32 hex digits)');
    const listQuery = recordQueryOf(query);
    const [calls, selected] = await Promise.all([
      options.store.listSummaries(listQuery),
      callSid === undefined ? Promise.resolve(null) : options.store.getRecord(callSid),
    ]);
    const html = renderAdminPage({
      graph,
      svg,
      calls,
      filters: { number: listQuery.number, limit: listQuery.limit ?? DEFAULT_LIMIT },
      selected: selected ?? undefined,
      missing: callSid !== undefined && !selected ? callSid : undefined,
      now: now(),
    });
    return reply
      .code(callSid !== undefined && !selected ? 404 : 200)
      .headers(PAGE_HEADERS)
      .type('text/html; charset=utf-8')
      .send(html);
  });

  app.get<{ Querystring: Record<string, unknown> }>('/api/calls', async (request) => {
    return { calls: await options.store.listSummaries(recordQueryOf(request.query)) };
  });

  app.get<{ Params: { callSid: string } }>('/api/calls/:callSid', async (request, reply) => {
    const { callSid } = request.params;
    if (!CALL_SID.test(callSid)) throw new AdminQueryError('callSid must be CA followed by 32 hex digits');
    const record = await options.store.getRecord(callSid);
    if (!record) return reply.code(404).type('text/plain').send(`Not Found: no call ${callSid}`);
    return record;
  });
}

function digest(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

/** Compares digests, so the time taken says nothing about the token, not even its length. */
function authorised(header: string | undefined, expected: Buffer): boolean {
  const match = typeof header === 'string' ? /^Bearer ([\x21-\x7e]+)$/i.exec(header.trim()) : null;
  return match !== null && timingSafeEqual(digest(match[1]!), expected);
}

function recordQueryOf(query: Record<string, unknown>): RecordQuery & { limit: number } {
  const result: RecordQuery & { limit: number } = { limit: DEFAULT_LIMIT };
  const since = optionalString(query.since);
  const until = optionalString(query.until);
  const number = optionalString(query.number);
  const limit = optionalString(query.limit);
  if (since !== undefined) result.since = timeOf('since', since);
  if (until !== undefined) result.until = timeOf('until', until);
  if (number !== undefined) {
    if (!NUMBER.test(number)) throw new AdminQueryError('number must be a phone number such as +15550100001');
    result.number = number;
  }
  if (limit !== undefined) {
    if (!/^\d{1,4}$/.test(limit) || Number(limit) < 1 || Number(limit) > MAX_LIMIT) {
      throw new AdminQueryError(`limit must be a whole number from 1 to ${MAX_LIMIT}`);
    }
    result.limit = Number(limit);
  }
  return result;
}

/** Milliseconds since the epoch, or an ISO 8601 date/time. */
function timeOf(name: string, value: string): number {
  const ms = /^\d{1,15}$/.test(value) ? Number(value) : /^\d{4}-\d{2}-\d{2}/.test(value) ? Date.parse(value) : Number.NaN;
  if (!Number.isFinite(ms)) throw new AdminQueryError(`${name} must be milliseconds since the epoch or an ISO 8601 date`);
  return ms;
}

function optionalString(value: unknown): string | undefined {
  if (value === undefined || value === '') return undefined;
  if (typeof value !== 'string') throw new AdminQueryError('each query parameter may appear once');
  return value;
}
