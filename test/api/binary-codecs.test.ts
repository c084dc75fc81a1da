// The hand-written codecs of the check requests and answers, and of the GetConnection and
// ListConnections answers, must give exactly what protobuf-es's fromBinary and toBinary give, for
// every shape, and leave what they do not expect to protobuf-es.

import { create, fromBinary, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { ConnectionSchema } from "../../gen/connections/v1/connection_pb.js";
import {
  BatchCheckConnectionRequestSchema,
  BatchCheckConnectionResponseSchema,
  type CheckConnectionRequest_Action,
  CheckConnectionRequestSchema,
  CheckConnectionResponseSchema,
  GetConnectionResponseSchema,
  ListConnectionsResponseSchema,
} from "../../gen/connections/v1/connection_service_pb.js";
import {
  decodeBatchCheckConnectionRequest,
  decodeCheckConnectionRequest,
  encodeBatchCheckConnectionResponse,
  encodeCheckConnectionResponse,
  encodeConnection,
  encodeGetConnectionResponse,
  encodeListConnectionsResponse,
} from "../../src/api/binary-codecs.js";

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
    const unknown = [{ no: 99, wireType: 0, data: new Uint8Array([1]) }];
    const check = create(CheckConnectionResponseSchema, { allowed: true });
    check.$unknown = unknown;
    expect(Buffer.from(encodeCheckConnectionResponse(check))).toEqual(
      Buffer.from(toBinary(CheckConnectionResponseSchema, check)),
    );
    const get = create(GetConnectionResponseSchema, { connection: CONNECTIONS[1] });
    get.$unknown = unknown;
    expect(Buffer.from(encodeGetConnectionResponse(get))).toEqual(
      Buffer.from(toBinary(GetConnectionResponseSchema, get)),
    );
    const list = create(ListConnectionsResponseSchema, { connections: [CONNECTIONS[1] ?? {}], nextPageToken: "t" });
    list.$unknown = unknown;
    expect(Buffer.from(encodeListConnectionsResponse(list))).toEqual(
      Buffer.from(toBinary(ListConnectionsResponseSchema, list)),
    );
  });
});

describe("GetConnection and ListConnections answer encoding", () => {
  it("encodes every GetConnectionResponse shape as toBinary does", () => {
    for (const init of [...CONNECTIONS.map((connection) => ({ connection })), {}]) {
      const response = create(GetConnectionResponseSchema, init);
      expect(Buffer.from(encodeGetConnectionResponse(response))).toEqual(
        Buffer.from(toBinary(GetConnectionResponseSchema, response)),
      );
    }
  });

  it("encodes pages of 0 to 100 Connections, with and without a page token, as toBinary does", () => {
    for (const count of [0, 1, 7, 100]) {
      for (const nextPageToken of ["", "eyJiZWZvcmUiOiJjeG5fMDEyMyJ9", "ünïcødé"]) {
        const response = create(ListConnectionsResponseSchema, {
          connections: Array.from({ length: count }, (_, index) => CONNECTIONS[index % CONNECTIONS.length] ?? {}),
          nextPageToken,
        });
        expect(Buffer.from(encodeListConnectionsResponse(response))).toEqual(
          Buffer.from(toBinary(ListConnectionsResponseSchema, response)),
        );
      }
    }
  });
});

describe("check request decoding", () => {
  const CHECKS: MessageInitShape<typeof CheckConnectionRequestSchema>[] = [
    {},
    { connectionId: "cxn_0123456789abcdef0123", organizationId: "org_a", action: 1, scope: "account.read" },
    { connectionId: "cxn_x", action: 2 },
    // An enum number the schema does not name stays a number (proto3 enums are open).
    { organizationId: "org_b", action: 9 as CheckConnectionRequest_Action, scope: "" },
    // Non-ASCII text: left to protobuf-es.
    { connectionId: "cxn_ü", scope: "😀" },
  ];
  const encodeCheck = (init: MessageInitShape<typeof CheckConnectionRequestSchema>) =>
    toBinary(CheckConnectionRequestSchema, create(CheckConnectionRequestSchema, init));

  it("decodes every CheckConnectionRequest as fromBinary does", () => {
    for (const init of CHECKS) {
      const bytes = encodeCheck(init);
      expect(decodeCheckConnectionRequest(bytes)).toEqual(fromBinary(CheckConnectionRequestSchema, bytes));
    }
  });

  it("decodes batches as fromBinary does, from a Buffer or a Uint8Array", () => {
    for (const count of [0, 1, 5, 100]) {
      const batch = create(BatchCheckConnectionRequestSchema, {
        checks: Array.from({ length: count }, (_, index) => CHECKS[index % CHECKS.length] ?? {}),
      });
      const bytes = toBinary(BatchCheckConnectionRequestSchema, batch);
      const expected = fromBinary(BatchCheckConnectionRequestSchema, bytes);
      expect(decodeBatchCheckConnectionRequest(bytes)).toEqual(expected);
      expect(decodeBatchCheckConnectionRequest(Buffer.from(bytes))).toEqual(expected);
    }
  });

  it("takes the last of a repeated singular field, and leaves unknown fields and other wire types to fromBinary", () => {
    const twice = Buffer.concat([encodeCheck({ scope: "account.read" }), encodeCheck({ scope: "inquiry.read" })]);
    expect(decodeCheckConnectionRequest(twice)).toEqual(fromBinary(CheckConnectionRequestSchema, twice));
    expect(decodeCheckConnectionRequest(twice).scope).toBe("inquiry.read");
    const unknown = Buffer.concat([encodeCheck({ scope: "account.read" }), Buffer.from([0x28, 0x01])]); // field 5
    expect(decodeCheckConnectionRequest(unknown)).toEqual(fromBinary(CheckConnectionRequestSchema, unknown));
    expect(decodeCheckConnectionRequest(unknown).$unknown).toHaveLength(1);
    const stringAsVarint = Buffer.from([0x08, 0x01]); // field 1 (a string) sent as a varint
    expect(() => decodeCheckConnectionRequest(stringAsVarint)).toThrow();
    expect(() => fromBinary(CheckConnectionRequestSchema, stringAsVarint)).toThrow();
  });

  it("refuses truncated bytes as fromBinary does", () => {
    const bytes = encodeCheck({ connectionId: "cxn_0123456789abcdef0123", scope: "account.read" });
    for (const cut of [1, 3, bytes.length - 1]) {
      const truncated = bytes.subarray(0, cut);
      expect(() => decodeCheckConnectionRequest(truncated)).toThrow();
      expect(() => fromBinary(CheckConnectionRequestSchema, truncated)).toThrow();
    }
  });
});
