/**
 * The AI agent port: given what the caller just said and the conversation so far,
 * stream the answer as text chunks. Adapters: `agent-client.ts` (the external agent
 * over SSE at KOOZIE_AGENT_URI) and `local-agent.ts` (built in, used when no agent
 * is configured so the whole loop works out of the box).
 */
export interface AgentRequest {
  callSid: string;
  message: string;
  /** The caller pressed these keys instead of speaking (`message` holds them too). */
  digits?: string;
  history: Array<{ role: 'user' | 'assistant'; content: string }>;
}

export interface Agent {
  readonly kind: 'remote' | 'local';
  /**
   * Yields the answer chunk by chunk. Throws `AgentError` on a refused connection,
   * a non-2xx answer, malformed SSE, an error the agent reports in its stream, a
   * stream that ends before any text, a connection that breaks after some
   * (`broken`: what was yielded stands), or a timeout; honours `signal`.
   */
  reply(request: AgentRequest, signal: AbortSignal): AsyncIterable<string>;
}

/**
 * `broken`: the connection dropped after some text; that text is the answer so far.
 * `reported`: the agent sent `event: error` (docs/agent-contract.md).
 */
export type AgentFailure = 'unreachable' | 'status' | 'malformed' | 'reported' | 'timeout' | 'empty' | 'aborted' | 'broken';

export class AgentError extends Error {
  override readonly name = 'AgentError';
  readonly failure: AgentFailure;
  readonly status: number | undefined;
  constructor(failure: AgentFailure, message: string, options?: { cause?: unknown; status?: number }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.failure = failure;
    this.status = options?.status;
  }
}
