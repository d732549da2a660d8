/**
 * The `size` guard: bounds on one argument, so a model cannot hand a server
 * a 50 MB string or a million-row batch the schema did not think to limit.
 *
 * - `maxLength`: a string's length in code points (as JSON Schema counts);
 * - `maxItems`: an array's length;
 * - `maxBytes`: the UTF-8 size of the value's JSON, whatever its type.
 *
 * A bound only applies to the type it is about: `maxLength` says nothing of
 * an array. `maxBytes` is the one that holds for any value.
 */
import { codePointLength } from '../schema-length.js';
import { GuardOptionError, type GuardCheck } from './types.js';

export interface SizeGuardOptions {
  readonly maxLength?: number;
  readonly maxItems?: number;
  readonly maxBytes?: number;
}

export function compileSizeGuard(options: SizeGuardOptions): GuardCheck {
  const { maxLength, maxItems, maxBytes } = options;
  if (maxLength === undefined && maxItems === undefined && maxBytes === undefined)
    throw new GuardOptionError('a size guard needs maxLength, maxItems or maxBytes');
  return (value) => {
    if (maxLength !== undefined && typeof value === 'string') {
      // Within the bound in UTF-16 units, it is within it in code points: no count needed.
      if (value.length > maxLength && codePointLength(value) > maxLength)
        return `a string longer than ${maxLength} characters`;
    }
    if (maxItems !== undefined && Array.isArray(value) && value.length > maxItems)
      return `a list of more than ${maxItems} items`;
    if (maxBytes !== undefined) {
      // A UTF-8 byte is at least one UTF-16 unit of the JSON text and a unit at most 3 bytes.
      const json = JSON.stringify(value) ?? '';
      if (json.length * 3 > maxBytes && Buffer.byteLength(json, 'utf8') > maxBytes)
        return `more than ${maxBytes} bytes of JSON`;
    }
    return undefined;
  };
}
