/**
 * What every argument guard is (servers.<name>.tools.<tool>.guards): a
 * check compiled once at config load from its options, then called with
 * the value of one argument on every tools/call.
 *
 * A check answers `undefined` when the value passes, or one sentence saying
 * why it does not ("a second statement (DROP) after the first"). The
 * sentence reaches the agent in the JSON-RPC error, so it names what was
 * found, never echoes more than a short excerpt of the value, and carries
 * no secret. The framework (./index.ts) handles an absent argument (not
 * checked: the tool's schema says whether it is required), arrays (each
 * element checked), the rule id, the argument path, shadow mode and the
 * error; a check only judges one value, which may be of any JSON type
 * (refuse what is not the type it expects).
 *
 * Checks that must ask the host (DNS for `url`, the file system for `path`
 * with symlinks resolved) are asynchronous; all others are synchronous, so
 * the hot path awaits nothing it does not need.
 */

/** A synchronous check: undefined passes, a string is the reason it does not. */
export type GuardCheck = (value: unknown) => string | undefined;

/** A check that asks the host (DNS, the file system). */
export type AsyncGuardCheck = (value: unknown) => Promise<string | undefined>;

/**
 * Options that cannot work (an unknown statement kind, a relative root, a
 * pattern RE2 refuses). Thrown at compile, so the config is refused at load
 * with the message, which names the option.
 */
export class GuardOptionError extends Error {
  override name = 'GuardOptionError';
}
