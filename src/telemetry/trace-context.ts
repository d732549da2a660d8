/** W3C Trace Context, level 1: what a well-formed `traceparent` is. */

/**
 * Version 00: trace id, parent id, flags; neither id all zeros (section
 * 3.2.2). Anything else is dropped, never passed on.
 */
export const TRACEPARENT = /^00-(?!0{32})([\da-f]{32})-(?!0{16})([\da-f]{16})-([\da-f]{2})$/;
