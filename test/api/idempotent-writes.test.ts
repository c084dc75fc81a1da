// IdempotentWrites with a write that saves its record: the answer sent is the answer saved, made and
// encoded once. (Replays, misuse and concurrency run end to end in test/e2e/idempotent-writes.test.ts.)

import { create, fromBinary } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { Connection_State } from "../../gen/connections/v1/connection_pb.js";
import {
  ConnectionService,
  CreateConnectionRequestSchema,
  CreateConnectionResponseSchema,
} from "../../gen/connections/v1/connection_service_pb.js";
import { binaryEncoderFor } from "../../src/api/binary-codecs.js";
import { IdempotentWrites } from "../../src/api/idempotency.js";
import { Idempotency } from "../../src/app/idempotency.js";
import type { IdempotencyRecord, Store } from "../../src/store/store.js";

describe("IdempotentWrites", () => {
  it("sends the bytes it saved for the answer, without encoding the answer again", async () => {
    // A store that has no earlier answer; the record is saved by the write below.
    const store = { findIdempotencyRecord: async () => undefined } as unknown as Store;
    const writes = new IdempotentWrites(new Idempotency(store));
    const method = ConnectionService.method.createConnection;
    const request = create(CreateConnectionRequestSchema, {
      destinationOrganizationId: "org_globex",
      scopes: ["account.read"],
      requestId: "retry-me",
    });
    let saved: IdempotencyRecord | undefined;
    const response = await writes.run(
      method,
      "organization:org_acme",
      request,
      (id: string) => create(CreateConnectionResponseSchema, { connection: { id, state: Connection_State.PENDING } }),
      async (answerFor) => {
        saved = answerFor?.("cxn_1");
        return "cxn_1";
      },
    );
    const outcome = saved?.outcome;
    const bytes = outcome !== undefined && "response" in outcome ? outcome.response : undefined;
    expect(bytes).toBeInstanceOf(Uint8Array);
    expect(fromBinary(CreateConnectionResponseSchema, bytes as Uint8Array).connection?.id).toBe("cxn_1");
    // The very array saved: what goes on the wire is what a retry will replay.
    expect(binaryEncoderFor(method.output)(response)).toBe(bytes);
  });
});
