// The hand-written codecs proved against the schema rather than fixtures: messages filled
// from their descriptors' fields (ConnectionSchema.fields and the encoded messages'), random values
// of each field's type, compared with protobuf-es's toBinary and fromBinary. A field added to one
// of these messages is filled here too, so the codec fails this test until it handles the field.

import {
  create,
  type DescMessage,
  fromBinary,
  isFieldSet,
  type MessageInitShape,
  type MessageShape,
  toBinary,
} from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { ConnectionSchema } from "../../gen/connections/v1/connection_pb.js";
import {
  BatchCheckConnectionRequestSchema,
  BatchCheckConnectionResponseSchema,
  CheckConnectionRequestSchema,
  CheckConnectionResponseSchema,
  GetConnectionResponseSchema,
  ListConnectionsResponseSchema,
} from "../../gen/connections/v1/connection_service_pb.js";
import {
  encodeBatchCheckConnectionResponse,
  encodeCheckConnectionResponse,
  encodeConnection,
  encodeGetConnectionResponse,
  encodeListConnectionsResponse,
  readBatchCheckConnectionRequest,
  readCheckConnectionRequest,
} from "../../src/api/binary-codecs.js";
import { Random, randomInit } from "../fuzz/generate.js";

const SAMPLES = 400;
const SEED = 21;

/** `SAMPLES` random messages of `schema`, and a check that every field of it was set in one of them. */
function samples<Desc extends DescMessage>(schema: Desc): MessageShape<Desc>[] {
  const random = new Random(SEED);
  const messages = Array.from({ length: SAMPLES }, () =>
    create(schema, randomInit(random, schema) as MessageInitShape<Desc>),
  );
  const neverSet = schema.fields
    .filter((field) => !messages.some((message) => isFieldSet(message, field)))
    .map((field) => field.name);
  // A oneof or a new kind of field the filler cannot set would make this test prove nothing.
  expect(neverSet, `fields of ${schema.typeName} the random filler never set`).toEqual([]);
  return messages;
}

const bytes = (data: Uint8Array) => Buffer.from(data.buffer, data.byteOffset, data.byteLength);

/** True when every string anywhere in `value` is ASCII: the only text the hand-written readers take. */
function asciiOnly(value: unknown): boolean {
  if (typeof value === "string") return [...value].every((char) => char.charCodeAt(0) < 0x80);
  if (Array.isArray(value)) return value.every(asciiOnly);
  if (value !== null && typeof value === "object") return Object.values(value).every(asciiOnly);
  return true;
}

describe("check codecs against the schema", () => {
  const encoders = [
    { schema: ConnectionSchema, encode: encodeConnection },
    { schema: CheckConnectionResponseSchema, encode: encodeCheckConnectionResponse },
    { schema: BatchCheckConnectionResponseSchema, encode: encodeBatchCheckConnectionResponse },
    { schema: GetConnectionResponseSchema, encode: encodeGetConnectionResponse },
    { schema: ListConnectionsResponseSchema, encode: encodeListConnectionsResponse },
  ] as const;

  it.each(encoders)("encodes random $schema.typeName with every field as toBinary does", ({ schema, encode }) => {
    let handWritten = 0;
    for (const message of samples(schema)) {
      const encoded = (encode as (message: MessageShape<typeof schema>) => Uint8Array)(message);
      expect(bytes(encoded)).toEqual(bytes(toBinary(schema, message)));
      // The hand-written writers answer a Buffer; toBinary, which they fall back on, a plain Uint8Array.
      if (Buffer.isBuffer(encoded)) handWritten++;
    }
    // Enough samples must take the hand-written path, or the comparison would only prove toBinary.
    expect(handWritten).toBeGreaterThan(SAMPLES / 10);
  });

  const readers = [
    { schema: CheckConnectionRequestSchema, read: readCheckConnectionRequest },
    { schema: BatchCheckConnectionRequestSchema, read: readBatchCheckConnectionRequest },
  ] as const;

  it.each(readers)("reads random $schema.typeName with every field as fromBinary does", ({ schema, read }) => {
    let handWritten = 0;
    for (const message of samples(schema)) {
      const encoded = toBinary(schema, message);
      const expected = fromBinary(schema, encoded);
      const decoded = read(encoded);
      if (asciiOnly(message)) {
        // Plain text: the reader must take it itself (a field it does not know would make it give up).
        expect(decoded, `left to protobuf-es: ${JSON.stringify(message)}`).toBeDefined();
        handWritten++;
      }
      if (decoded !== undefined) expect(decoded).toEqual(expected);
    }
    expect(handWritten).toBeGreaterThan(SAMPLES / 10);
  });
});
