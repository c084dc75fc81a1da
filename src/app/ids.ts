// Resource ids: made here (a prefix, the time, and 128 random bits) and checked here, so that the
// rest of the code never guesses what an id looks like.
//
// The time leads so that ids made close together sort close together: a new row's entry in the
// id's unique index (and in the events' index by Connection) then lands on the index's most recent
// pages, which the writes of one SQLite group commit share, instead of on a random leaf each
// (docs/performance.md). It tells no more than the create_time that whoever sees the id can read.

import { randomBytes } from "node:crypto";

/** Bytes of one id: 128 random bits, unguessable, so an id alone never grants access. */
const ID_BYTES = 16;
/** Random bytes drawn from the CSPRNG at once: one call per 256 ids instead of one per id. */
const ENTROPY_BYTES = ID_BYTES * 256;
let entropy = Buffer.alloc(0);
let taken = ENTROPY_BYTES;

/** The 64 URL-safe characters in ASCII order: numbers written with them sort as text. */
const ORDERED_DIGITS = "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";
/** Eight such digits hold 48 bits of milliseconds since 1970, enough until the year 10889. */
const TIME_DIGITS = 8;

/** `ms` as TIME_DIGITS ordered digits. */
function timeDigits(ms: number): string {
  let rest = ms;
  let digits = "";
  for (let place = 0; place < TIME_DIGITS; place++) {
    digits = ORDERED_DIGITS.charAt(rest % 64) + digits;
    rest = Math.floor(rest / 64);
  }
  return digits;
}

/** A prefixed id, URL-safe: the time, then random bytes used once, never shared. */
export function newId(prefix: "cxn" | "evt" | "org" | "req", now = Date.now()): string {
  if (taken === ENTROPY_BYTES) {
    entropy = randomBytes(ENTROPY_BYTES);
    taken = 0;
  }
  const start = taken;
  taken += ID_BYTES;
  return `${prefix}_${timeDigits(now)}${entropy.toString("base64url", start, taken)}`;
}

const ORGANIZATION_ID = /^[A-Za-z0-9_-]{1,64}$/;
const CONNECTION_ID = /^cxn_[A-Za-z0-9_-]{1,64}$/;

export function isOrganizationId(value: string): boolean {
  return ORGANIZATION_ID.test(value);
}

export function isConnectionId(value: string): boolean {
  return CONNECTION_ID.test(value);
}
