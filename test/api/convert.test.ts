// connectionToProto: a stored Connection becomes the message that protobuf-es's own create() and
// timestampFromDate would make (timestamps before 1970 included), a new one for every answer.

import { create, equals, toBinary, toJson } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { Connection_State, ConnectionSchema } from "../../gen/connections/v1/connection_pb.js";
import { connectionToProto } from "../../src/api/convert.js";
import type { ConnectionRecord } from "../../src/store/store.js";

const RECORDS: ConnectionRecord[] = [
  {
    id: "cxn_01",
    sourceOrganizationId: "org_a",
    destinationOrganizationId: "org_b",
    name: "payroll ✓",
    scopes: ["account.read", "inquiry.read"],
    state: "ACTIVE",
    createTime: new Date("2026-11-28T20:19:38.123Z"),
    updateTime: new Date("2026-11-28T20:19:39.001Z"),
    activateTime: new Date("2026-11-28T20:19:39.001Z"),
    deactivateTime: undefined,
    creator: "user:usr_123",
    createRequestId: "req-1",
    version: 2,
  },
  {
    id: "cxn_02",
    sourceOrganizationId: "org_b",
    destinationOrganizationId: "org_a",
    name: "",
    scopes: ["transaction.read"],
    state: "INACTIVE",
    // Before 1970: the seconds are negative and the nanos still count forwards.
    createTime: new Date(-1_500),
    updateTime: new Date(0),
    activateTime: undefined,
    deactivateTime: new Date(4_102_444_800_999),
    creator: "",
    createRequestId: "",
    version: 7,
  },
];

describe("connectionToProto", () => {
  it.each(RECORDS)("gives what create(ConnectionSchema) and timestampFromDate give ($id)", (record) => {
    const made = create(ConnectionSchema, {
      id: record.id,
      sourceOrganizationId: record.sourceOrganizationId,
      destinationOrganizationId: record.destinationOrganizationId,
      name: record.name,
      scopes: [...record.scopes],
      state: Connection_State[record.state],
      createTime: timestampFromDate(record.createTime),
      updateTime: timestampFromDate(record.updateTime),
      activateTime: record.activateTime && timestampFromDate(record.activateTime),
      deactivateTime: record.deactivateTime && timestampFromDate(record.deactivateTime),
      creator: record.creator,
      etag: `"${record.version}"`,
    });
    const written = connectionToProto(record);
    expect(equals(ConnectionSchema, written, made)).toBe(true);
    expect(written).toEqual(made);
    expect(toBinary(ConnectionSchema, written)).toEqual(toBinary(ConnectionSchema, made));
    expect(toJson(ConnectionSchema, written)).toEqual(toJson(ConnectionSchema, made));
  });

  it("gives each answer a message of its own", () => {
    const record = RECORDS[0] as ConnectionRecord;
    const first = connectionToProto(record);
    expect(connectionToProto(record)).not.toBe(first);
    expect(first.scopes).not.toBe(record.scopes);
  });
});
