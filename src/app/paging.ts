// Page sizes and opaque page tokens. A token carries the store's keyset cursor and a digest of
// the filters it was issued for, so a token replayed with other filters is refused, not misread.

import { createHash } from "node:crypto";
import { invalidArgument } from "./errors.js";

const DEFAULT_PAGE_SIZE = 50;
export const MAX_PAGE_SIZE = 500;

export function pageSize(requested: number): number {
  if (requested < 0) throw invalidArgument("page_size", "page_size must not be negative");
  if (requested === 0) return DEFAULT_PAGE_SIZE;
  return Math.min(requested, MAX_PAGE_SIZE);
}

function filterDigest(filters: readonly unknown[]): string {
  return createHash("sha256").update(JSON.stringify(filters)).digest("base64url").slice(0, 16);
}

export function encodePageToken(cursor: string, filters: readonly unknown[]): string {
  return Buffer.from(JSON.stringify({ c: cursor, f: filterDigest(filters) })).toString("base64url");
}

/** The cursor inside `token`, or undefined for the first page. */
export function decodePageToken(token: string, filters: readonly unknown[]): string | undefined {
  if (token === "") return undefined;
  let decoded: unknown;
  try {
    decoded = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    throw invalidArgument("page_token", "page_token is not a token this service issued");
  }
  if (typeof decoded !== "object" || decoded === null) {
    throw invalidArgument("page_token", "page_token is not a token this service issued");
  }
  const { c, f } = decoded as { c?: unknown; f?: unknown };
  if (typeof c !== "string" || typeof f !== "string") {
    throw invalidArgument("page_token", "page_token is not a token this service issued");
  }
  if (f !== filterDigest(filters)) {
    throw invalidArgument("page_token", "page_token was issued for other filters; start again without it");
  }
  return c;
}
