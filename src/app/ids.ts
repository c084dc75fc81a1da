// Resource ids: made here (a prefix and 128 random bits) and checked here, so that the rest of the
// code never guesses what an id looks like.

import { randomBytes } from "node:crypto";

/** Bytes of one id: 128 random bits, unguessable, so an id alone never grants access. */
const ID_BYTES = 16;
/** Random bytes drawn from the CSPRNG at once: one call per 256 ids instead of one per id. */
const ENTROPY_BYTES = ID_BYTES * 256;
let entropy = Buffer.alloc(0);
let taken = ENTROPY_BYTES;

/** A prefixed random id, URL-safe. Each id's bytes are used once, never shared. */
export function newId(prefix: "cxn" | "evt" | "org" | "req"): string {
  if (taken === ENTROPY_BYTES) {
    entropy = randomBytes(ENTROPY_BYTES);
    taken = 0;
  }
  const start = taken;
  taken += ID_BYTES;
  return `${prefix}_${entropy.toString("base64url", start, taken)}`;
}

const ORGANIZATION_ID = /^[A-Za-z0-9_-]{1,64}$/;
const CONNECTION_ID = /^cxn_[A-Za-z0-9_-]{1,64}$/;

export function isOrganizationId(value: string): boolean {
  return ORGANIZATION_ID.test(value);
}

export function isConnectionId(value: string): boolean {
  return CONNECTION_ID.test(value);
}
