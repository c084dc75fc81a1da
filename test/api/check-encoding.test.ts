// The hand-written encoders of the check answers must write exactly the bytes that protobuf-es's
// toBinary writes, for every shape of answer, and leave what they do not expect to toBinary.

import { create, fromBinary, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { ConnectionSchema } from "../../gen/connections/v1/connection_pb.js";
import {
  BatchCheckConnectionResponseSchema,
  CheckConnectionResponseSchema,
} from "../../gen/connections/v1/connection_service_pb.js";
import {
  encodeBatchCheckConnectionResponse,
  encodeCheckConnectionResponse,
  encodeConnection,
} from "../../src/api/check-encoding.js";

const CONNECTIONS: MessageInitShape<typeof ConnectionSchema>[] = [
  {},
  {
    id: "cxn_0123456789abcdef0123",
    sourceOrganizationId: "org_a",
    destinationOrganizationId: "org_b",
    name: "Acme to Globex",
    scopes: ["account.read", "transaction.read"],
    state: 2,
    createTime: timestampFromDate(new Date("2026-11-28T20:19:38.123Z")),
    updateTime: timestampFromDate(new Date("2026-11-28T20:19:39.000Z")),
    activateTime: timestampFromDate(new Date("2026-11-28T20:19:39.000Z")),
    creator: "user:usr_123",
    etag: '"2"',
  },
  {
    id: "cxn_x",
    name: "ünïcødé ✓ 😀 and a lone \ud800 surrogate",
    scopes: ["", "inquiry.read"],
    state: 3,
    createTime: { seconds: 0n, nanos: 0 },
    deactivateTime: { seconds: 4_102_444_800n, nanos: 999_999_999 },
    creator: "x".repeat(300),
    etag: '"123456"',
  },
  // Before 1970: left to toBinary.
  { id: "cxn_old", createTime: { seconds: -5n, nanos: 1 } },
];

describe("check answer encoding", () => {
  it.each(CONNECTIONS.map((init, index) => ({ index, init })))(
    "encodes Connection #$index as toBinary does",
    ({ init }) => {
      const connection = create(ConnectionSchema, init);
      expect(Buffer.from(encodeConnection(connection))).toEqual(Buffer.from(toBinary(ConnectionSchema, connection)));
      // Encoded once per message.
      expect(encodeConnection(connection)).toBe(encodeConnection(connection));
    },
  );

  it("encodes every CheckConnectionResponse shape as toBinary does", () => {
    for (const init of CONNECTIONS) {
      for (const answer of [
        { allowed: true, reason: 1, state: 2, connection: create(ConnectionSchema, init) },
        { allowed: false, reason: 3, state: 0 },
        {},
      ]) {
        const response = create(CheckConnectionResponseSchema, answer);
        const bytes = encodeCheckConnectionResponse(response);
        expect(Buffer.from(bytes)).toEqual(Buffer.from(toBinary(CheckConnectionResponseSchema, response)));
        expect(fromBinary(CheckConnectionResponseSchema, bytes)).toEqual(
          fromBinary(CheckConnectionResponseSchema, toBinary(CheckConnectionResponseSchema, response)),
        );
      }
    }
  });

  it("encodes batches of 0 to 100 answers as toBinary does", () => {
    for (const count of [0, 1, 7, 100]) {
      const response = create(BatchCheckConnectionResponseSchema, {
        results: Array.from({ length: count }, (_, index) => ({
          allowed: index % 3 === 0,
          reason: (index % 5) + 1,
          state: index % 4,
          ...(index % 2 === 0 ? { connection: create(ConnectionSchema, CONNECTIONS[index % 3]) } : {}),
        })),
      });
      expect(Buffer.from(encodeBatchCheckConnectionResponse(response))).toEqual(
        Buffer.from(toBinary(BatchCheckConnectionResponseSchema, response)),
      );
    }
  });

  it("leaves messages with unknown fields to toBinary, which keeps them", () => {
    const response = create(CheckConnectionResponseSchema, { allowed: true });
    response.$unknown = [{ no: 99, wireType: 0, data: new Uint8Array([1]) }];
    expect(Buffer.from(encodeCheckConnectionResponse(response))).toEqual(
      Buffer.from(toBinary(CheckConnectionResponseSchema, response)),
    );
  });
});
