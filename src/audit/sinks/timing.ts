/** Waiting, for sinks: a pause, and a promise raced against a deadline. */

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/** Resolves when `work` settles or at `deadline` (a `Date.now()` value), whichever is first. */
export async function untilDeadline(work: Promise<unknown>, deadline: number): Promise<void> {
  const left = deadline - Date.now();
  if (left <= 0) return;
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    work.then(
      () => undefined,
      () => undefined,
    ),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, left);
      timer.unref();
    }),
  ]);
  clearTimeout(timer);
}
