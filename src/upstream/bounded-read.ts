/**
 * Reading a whole HTTP answer that is hostile until bounded: a JWKS, a token
 * endpoint's answer, a SIEM's answer to an audit batch. Past `limit` bytes
 * the body is destroyed (the connection with it) and the read rejects, so a
 * peer cannot make the gateway hold an answer of any size.
 */
export async function readBounded(
  body: AsyncIterable<Buffer> & { destroy(): void },
  limit: number,
): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.length;
    if (size > limit) {
      body.destroy();
      throw new Error(`answer larger than ${limit} bytes`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}
