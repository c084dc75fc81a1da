// The x-request-id rule, shared by the pipeline and by transports that answer before the pipeline
// runs (too large, malformed): echo a well-formed id, otherwise make one up.

import { randomUUID } from "node:crypto";

const WELL_FORMED_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

export function requestIdFor(presented: string | undefined): string {
  return presented !== undefined && WELL_FORMED_REQUEST_ID.test(presented)
    ? presented
    : `req_${randomUUID().replaceAll("-", "")}`;
}
