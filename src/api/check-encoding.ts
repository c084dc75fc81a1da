// Protobuf binary encoding of the check answers, the token service's hot path. protobuf-es's generic
// toBinary walks every message by reflection and allocates a few typed arrays per string field; a
// BatchCheckConnection answer carries up to 100 Connections, so that cost dominated the call. These
// encoders compute the size first and write into one buffer, and they encode each Connection
// message once for as long as it lives (convert.ts keeps one per stored version). They produce the
// same bytes as toBinary (test/api/check-encoding.test.ts compares them); a message they do not
// expect (unknown fields, a timestamp before 1970) is left to toBinary.

import { type DescMessage, type Message, toBinary } from "@bufbuild/protobuf";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { type Connection, ConnectionSchema } from "../../gen/connections/v1/connection_pb.js";
import {
  type BatchCheckConnectionResponse,
  BatchCheckConnectionResponseSchema,
  type CheckConnectionResponse,
  CheckConnectionResponseSchema,
} from "../../gen/connections/v1/connection_service_pb.js";

const LENGTH_DELIMITED = 2;

/** Bytes of a varint; `value` is a non-negative safe integer. */
function varintSize(value: number): number {
  let size = 1;
  for (let rest = value; rest >= 0x80; rest = Math.floor(rest / 0x80)) size++;
  return size;
}

class Writer {
  offset = 0;
  constructor(readonly buffer: Buffer) {}

  varint(value: number): void {
    let rest = value;
    while (rest >= 0x80) {
      this.buffer[this.offset++] = (rest % 0x80) | 0x80;
      rest = Math.floor(rest / 0x80);
    }
    this.buffer[this.offset++] = rest;
  }

  tag(field: number, wireType: number): void {
    this.varint(field * 8 + wireType);
  }

  bytes(field: number, bytes: Uint8Array): void {
    this.tag(field, LENGTH_DELIMITED);
    this.varint(bytes.length);
    this.buffer.set(bytes, this.offset);
    this.offset += bytes.length;
  }
}

/** A string field as it goes on the wire (tag, length, UTF-8), or 0 bytes when empty (proto3 default). */
function stringSize(field: number, value: string): number {
  if (value === "") return 0;
  const length = Buffer.byteLength(value, "utf8");
  return varintSize(field * 8) + varintSize(length) + length;
}

function writeString(writer: Writer, field: number, value: string): void {
  if (value === "") return;
  writer.tag(field, LENGTH_DELIMITED);
  writer.varint(Buffer.byteLength(value, "utf8"));
  writer.offset += writer.buffer.write(value, writer.offset, "utf8");
}

function varintFieldSize(field: number, value: number): number {
  return value === 0 ? 0 : varintSize(field * 8) + varintSize(value);
}

function writeVarintField(writer: Writer, field: number, value: number): void {
  if (value === 0) return;
  writer.tag(field, 0);
  writer.varint(value);
}

/** The Timestamp's own bytes, or undefined when it is one this encoder leaves to toBinary. */
function timestampBody(timestamp: Timestamp): { seconds: number; nanos: number; size: number } | undefined {
  const seconds = Number(timestamp.seconds);
  if (seconds < 0 || timestamp.nanos < 0 || !Number.isSafeInteger(seconds) || hasUnknown(timestamp)) return undefined;
  return { seconds, nanos: timestamp.nanos, size: varintFieldSize(1, seconds) + varintFieldSize(2, timestamp.nanos) };
}

function hasUnknown(message: Message): boolean {
  return message.$unknown !== undefined && message.$unknown.length > 0;
}

const encodedConnections = new WeakMap<Connection, Uint8Array>();

/** A Connection's bytes, encoded once per message object. */
export function encodeConnection(connection: Connection): Uint8Array {
  const cached = encodedConnections.get(connection);
  if (cached !== undefined) return cached;
  const encoded = writeConnection(connection) ?? toBinary(ConnectionSchema, connection);
  encodedConnections.set(connection, encoded);
  return encoded;
}

function writeConnection(connection: Connection): Uint8Array | undefined {
  if (hasUnknown(connection)) return undefined;
  const times: [number, Timestamp | undefined][] = [
    [7, connection.createTime],
    [8, connection.updateTime],
    [9, connection.activateTime],
    [10, connection.deactivateTime],
  ];
  const bodies = [];
  let size =
    stringSize(1, connection.id) +
    stringSize(2, connection.sourceOrganizationId) +
    stringSize(3, connection.destinationOrganizationId) +
    stringSize(4, connection.name) +
    varintFieldSize(6, connection.state) +
    stringSize(11, connection.creator) +
    stringSize(12, connection.etag);
  for (const scope of connection.scopes) {
    const length = Buffer.byteLength(scope, "utf8");
    size += 1 + varintSize(length) + length;
  }
  for (const [field, time] of times) {
    if (time === undefined) continue;
    const body = timestampBody(time);
    if (body === undefined) return undefined;
    bodies.push({ field, body });
    size += varintSize(field * 8) + varintSize(body.size) + body.size;
  }
  const writer = new Writer(Buffer.allocUnsafe(size));
  writeString(writer, 1, connection.id);
  writeString(writer, 2, connection.sourceOrganizationId);
  writeString(writer, 3, connection.destinationOrganizationId);
  writeString(writer, 4, connection.name);
  for (const scope of connection.scopes) {
    writer.tag(5, LENGTH_DELIMITED);
    writer.varint(Buffer.byteLength(scope, "utf8"));
    writer.offset += writer.buffer.write(scope, writer.offset, "utf8");
  }
  writeVarintField(writer, 6, connection.state);
  for (const { field, body } of bodies) {
    writer.tag(field, LENGTH_DELIMITED);
    writer.varint(body.size);
    writeVarintField(writer, 1, body.seconds);
    writeVarintField(writer, 2, body.nanos);
  }
  writeString(writer, 11, connection.creator);
  writeString(writer, 12, connection.etag);
  return writer.buffer;
}

/** One CheckConnectionResponse's size and writer, or undefined to leave it to toBinary. */
function checkResponse(response: CheckConnectionResponse): { size: number; write(writer: Writer): void } | undefined {
  if (hasUnknown(response)) return undefined;
  const connection = response.connection === undefined ? undefined : encodeConnection(response.connection);
  const allowed = response.allowed ? 1 : 0;
  const size =
    varintFieldSize(1, allowed) +
    varintFieldSize(2, response.reason) +
    varintFieldSize(3, response.state) +
    (connection === undefined ? 0 : 1 + varintSize(connection.length) + connection.length);
  return {
    size,
    write(writer) {
      writeVarintField(writer, 1, allowed);
      writeVarintField(writer, 2, response.reason);
      writeVarintField(writer, 3, response.state);
      if (connection !== undefined) writer.bytes(4, connection);
    },
  };
}

export function encodeCheckConnectionResponse(response: CheckConnectionResponse): Uint8Array {
  const encoded = checkResponse(response);
  if (encoded === undefined) return toBinary(CheckConnectionResponseSchema, response);
  const writer = new Writer(Buffer.allocUnsafe(encoded.size));
  encoded.write(writer);
  return writer.buffer;
}

export function encodeBatchCheckConnectionResponse(response: BatchCheckConnectionResponse): Uint8Array {
  const results = [];
  let size = 0;
  for (const result of response.results) {
    const encoded = checkResponse(result);
    if (encoded === undefined || hasUnknown(response)) return toBinary(BatchCheckConnectionResponseSchema, response);
    results.push(encoded);
    size += 1 + varintSize(encoded.size) + encoded.size;
  }
  const writer = new Writer(Buffer.allocUnsafe(size));
  for (const encoded of results) {
    writer.tag(1, LENGTH_DELIMITED);
    writer.varint(encoded.size);
    encoded.write(writer);
  }
  return writer.buffer;
}

/** The hand-written encoders, by the message they encode; every other message goes through toBinary. */
export const BINARY_ENCODERS: ReadonlyMap<string, (message: Message) => Uint8Array> = new Map<
  string,
  (message: Message) => Uint8Array
>([
  [
    CheckConnectionResponseSchema.typeName,
    (message) => encodeCheckConnectionResponse(message as CheckConnectionResponse),
  ],
  [
    BatchCheckConnectionResponseSchema.typeName,
    (message) => encodeBatchCheckConnectionResponse(message as BatchCheckConnectionResponse),
  ],
]);

/** How the gRPC fast path encodes a response of `schema`. */
export function binaryEncoderFor(schema: DescMessage): (message: Message) => Uint8Array {
  return BINARY_ENCODERS.get(schema.typeName) ?? ((message) => toBinary(schema, message));
}
