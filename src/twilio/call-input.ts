/**
 * What every Twilio transport checks the same way: a call's identifier, and how
 * much of a caller's words is passed on (`<Gather>` forms, ConversationRelay
 * prompts).
 *
 * @see https://www.twilio.com/docs/glossary/what-is-a-sid (CA + 32 hex digits)
 */

export const CALL_SID = /^CA[0-9a-fA-F]{32}$/;

/** Longest utterance passed on to the agent; Twilio's transcripts are far shorter. */
export const MAX_UTTERANCE_CHARS = 2_000;
