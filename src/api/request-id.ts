// The x-request-id rule, shared by the pipeline and by transports that answer before the pipeline
// runs (too large, malformed): echo a well-formed id, otherwise make one up.

import { randomFillSync } from "node:crypto";

const WELL_FORMED_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

export function requestIdFor(presented: string | undefined): string {
  return presented !== undefined && WELL_FORMED_REQUEST_ID.test(presented) ? presented : `req_${randomHex32()}`;
}

// Random hex made 64 ids at a time: much less than what randomUUID() and removing its dashes cost,
// on a path that most requests take (clients seldom send x-request-id).
const ID_HEX_DIGITS = 32;
const randomBytes = Buffer.alloc((64 * ID_HEX_DIGITS) / 2);
let randomHex = "";
let nextDigit = 0;

function randomHex32(): string {
  if (nextDigit + ID_HEX_DIGITS > randomHex.length) {
    randomHex = randomFillSync(randomBytes).toString("hex");
    nextDigit = 0;
  }
  nextDigit += ID_HEX_DIGITS;
  return randomHex.slice(nextDigit - ID_HEX_DIGITS, nextDigit);
}
