/**
 * Is a WebSocket upgrade request from Twilio? ConversationRelay "includes an
 * X-Twilio-Signature header in the initial WebSocket handshake request …
 * following the same verification mechanism used for standard Twilio webhooks":
 * the HMAC-SHA1, keyed by the auth token, of the public URL it opened (the
 * `<ConversationRelay url>`, `wss://` and query string included) and no
 * parameters, since an upgrade is a GET. Checked with twilio's own
 * `validateRequest`, as every webhook is (src/http/app.ts), in the route's
 * `preValidation` hook: a request that fails is answered 403 and never upgraded.
 *
 * @see https://www.twilio.com/docs/voice/conversationrelay/onboarding#websocket-security-with-signature-validation
 * @see https://www.twilio.com/docs/usage/webhooks/webhooks-security
 */
import type { IncomingHttpHeaders } from 'node:http';
import { validateRequest } from 'twilio/lib/webhooks/webhooks.js';

/** `publicUrl`: the URL Twilio was told to open, e.g. `wss://voice.example.com/relay?resume=1` (the public base + the request's path and query). */
export function verifyRelayUpgrade(authToken: string, publicUrl: string, headers: IncomingHttpHeaders): boolean {
  const signature = headers['x-twilio-signature'];
  return typeof signature === 'string' && validateRequest(authToken, signature, publicUrl, {});
}
