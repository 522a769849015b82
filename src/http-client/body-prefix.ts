/**
 * Reads the start of an HTTP response body, no further than needed: error bodies
 * from outside services are for messages, and a hostile or broken server must not
 * make us read (or buffer) without bound. Shared by the agent and speech clients.
 */
export async function readBodyPrefix(response: Response, maxChars: number): Promise<string> {
  if (response.body === null) return '';
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let text = '';
  try {
    while (text.length < maxChars) {
      const read = await reader.read();
      if (read.done) break;
      text += decoder.decode(read.value, { stream: true });
    }
  } catch {
    // A body that cannot be read only loses detail: the status tells what went wrong.
  } finally {
    reader.cancel().catch(() => {});
  }
  return text;
}
