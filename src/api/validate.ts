// Wire input to well-formed domain input. Every refusal names the offending field, so a caller
// can fix its request; nothing here touches the database.

import { invalidArgument, unknownScope } from "../app/errors.js";
import { isConnectionId, isOrganizationId } from "../app/ids.js";
import { SCOPE_CATALOGUE, type State } from "../domain/connection.js";

const MAX_NAME_LENGTH = 200;
const MAX_REASON_LENGTH = 500;
const MAX_ETAG_LENGTH = 64;

export function connectionId(field: string, value: string): string {
  if (value === "") throw invalidArgument(field, `${field} is required`);
  if (!isConnectionId(value)) throw invalidArgument(field, `${field} must look like "cxn_..."`);
  return value;
}

export function organizationId(field: string, value: string): string {
  if (value === "") throw invalidArgument(field, `${field} is required`);
  if (!isOrganizationId(value)) throw invalidArgument(field, `${field} must be 1-64 letters, digits, '_' or '-'`);
  return value;
}

export function boundedText(field: string, value: string, maxLength: number): string {
  if (value.length > maxLength) throw invalidArgument(field, `${field} must be at most ${maxLength} characters`);
  // PostgreSQL cannot store U+0000 in text; refuse it on every dialect alike.
  if (value.includes("\u0000")) throw invalidArgument(field, `${field} must not contain NUL characters`);
  return value;
}

export const name = (value: string, field = "name"): string => boundedText(field, value, MAX_NAME_LENGTH);
export const reason = (value: string): string => boundedText("reason", value, MAX_REASON_LENGTH);
export const etag = (value: string, field = "etag"): string => boundedText(field, value, MAX_ETAG_LENGTH);

export function requiredName(value: string): string {
  if (value.trim() === "") throw invalidArgument("name", "name is required");
  return name(value);
}

/** One scope for a check: it must exist in the catalogue. */
export function scope(field: string, value: string): string {
  if (value === "") throw invalidArgument(field, `${field} is required`);
  if (!SCOPE_CATALOGUE.has(value)) throw unknownScope(field, value);
  return value;
}

/** The paths of an update mask: at least one, each one of `mutable`. */
export function updateMask<T extends string>(field: string, paths: readonly string[], mutable: readonly T[]): Set<T> {
  if (paths.length === 0) throw invalidArgument(field, `${field} must name at least one of ${mutable.join(", ")}`);
  for (const path of paths) {
    if (!(mutable as readonly string[]).includes(path)) {
      throw invalidArgument(
        field,
        `${field} may name only ${mutable.join(", ")}, not ${JSON.stringify(path.slice(0, 64))}`,
      );
    }
  }
  return new Set(paths as T[]);
}

/** A proto enum value to one of the domain's names, refusing UNSPECIFIED and unknown numbers. */
export function enumValue<T extends string>(
  field: string,
  value: number,
  names: Readonly<Record<number, string>>,
  allowed: readonly T[],
): T {
  const found = names[value];
  if (found === undefined || !(allowed as readonly string[]).includes(found)) {
    throw invalidArgument(field, `${field} must be one of ${allowed.join(", ")}`);
  }
  return found as T;
}

export const STATES: readonly State[] = ["PENDING", "ACTIVE", "INACTIVE"];
