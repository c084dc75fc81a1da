// Resource ids: made here (a prefix and 128 random bits) and checked here, so that the rest of the
// code never guesses what an id looks like.

import { randomBytes } from "node:crypto";

/** 128 random bits, URL-safe: unguessable, so an id alone never grants access. */
export function newId(prefix: "cxn" | "evt" | "org" | "req"): string {
  return `${prefix}_${randomBytes(16).toString("base64url")}`;
}

const ORGANIZATION_ID = /^[A-Za-z0-9_-]{1,64}$/;
const CONNECTION_ID = /^cxn_[A-Za-z0-9_-]{1,64}$/;

export function isOrganizationId(value: string): boolean {
  return ORGANIZATION_ID.test(value);
}

export function isConnectionId(value: string): boolean {
  return CONNECTION_ID.test(value);
}
