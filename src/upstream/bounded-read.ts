/**
 * Reading a whole HTTP answer that is hostile until bounded: a JWKS, a token
 * endpoint's answer, a SIEM's answer to an audit batch, a replay target's
 * answer. Past `limit` bytes the read rejects, and leaving the iteration
 * ends the body (a Node stream is destroyed, a web stream cancelled), so a
 * peer cannot make the gateway hold an answer of any size.
 */
export async function readBounded(body: AsyncIterable<Uint8Array>, limit: number): Promise<string> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.length;
    if (size > limit) throw new Error(`answer larger than ${limit} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}
