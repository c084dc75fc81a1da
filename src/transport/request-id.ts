// The request id of a request that the transport refuses before the pipeline sees it (too large,
// malformed, unsupported encoding), so that those answers carry an x-request-id too. The rule is
// the pipeline's (src/api/rpc.ts): echo a well-formed x-request-id, otherwise make one up.

import { randomUUID } from "node:crypto";

const WELL_FORMED_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

export function requestIdFor(presented: string | undefined): string {
  return presented !== undefined && WELL_FORMED_REQUEST_ID.test(presented)
    ? presented
    : `req_${randomUUID().replaceAll("-", "")}`;
}
