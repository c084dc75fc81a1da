// Protobuf binary encoding of the read path's messages: the check requests and answers (the token
// service's hot path), and the answers of GetConnection and ListConnections. protobuf-es's generic
// fromBinary/toBinary walk every message by reflection and allocate a few typed arrays per string
// field; a BatchCheckConnection carries up to 100 checks and answers with up to 100 Connections, so
// that cost dominated the call; it was also a sixth of a GetConnection's CPU (toBinary took 11 µs
// for one Connection, which these encoders write in 1.5). The encoders compute the size first and
// write into one buffer; the decoders read the plain shape the check requests have. They give
// exactly what toBinary and fromBinary give (test/api/binary-codecs*.test.ts compare them, on
// fixtures and on messages filled from the schema, so a new field fails there until it is written
// here); anything they do not expect (unknown fields, non-ASCII text, a timestamp before 1970) is
// left to protobuf-es.

import { type DescMessage, fromBinary, type Message, toBinary } from "@bufbuild/protobuf";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { type Connection, ConnectionSchema } from "../../gen/connections/v1/connection_pb.js";
import {
  type BatchCheckConnectionRequest,
  BatchCheckConnectionRequestSchema,
  type BatchCheckConnectionResponse,
  BatchCheckConnectionResponseSchema,
  type CheckConnectionRequest,
  CheckConnectionRequestSchema,
  type CheckConnectionResponse,
  CheckConnectionResponseSchema,
  type GetConnectionResponse,
  GetConnectionResponseSchema,
  type ListConnectionsResponse,
  ListConnectionsResponseSchema,
} from "../../gen/connections/v1/connection_service_pb.js";

const LENGTH_DELIMITED = 2;

/** Bytes of a varint; `value` is a non-negative safe integer. */
function varintSize(value: number): number {
  let size = 1;
  for (let rest = value; rest >= 0x80; rest = Math.floor(rest / 0x80)) size++;
  return size;
}

/** A length-delimited field of `length` bytes as it goes on the wire: tag, length and bytes. */
function lengthDelimitedSize(field: number, length: number): number {
  return varintSize(field * 8) + varintSize(length) + length;
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

/**
 * UTF-8 bytes of `value`. Ids, scopes and etags are ASCII, and a loop over their characters costs
 * far less than a call into Buffer's native code.
 */
function utf8Length(value: string): number {
  for (let index = 0; index < value.length; index++) {
    if (value.charCodeAt(index) >= 0x80) return Buffer.byteLength(value, "utf8");
  }
  return value.length;
}

/** A string field as it goes on the wire (tag, length, UTF-8), or 0 bytes when empty (proto3 default). */
function stringSize(field: number, value: string): number {
  return value === "" ? 0 : elementSize(field, value);
}

/** An element of a repeated string field, which is written even when empty. */
function elementSize(field: number, value: string): number {
  return lengthDelimitedSize(field, utf8Length(value));
}

function writeString(writer: Writer, field: number, value: string): void {
  if (value !== "") writeElement(writer, field, value);
}

function writeElement(writer: Writer, field: number, value: string): void {
  writer.tag(field, LENGTH_DELIMITED);
  const length = utf8Length(value);
  writer.varint(length);
  if (length === value.length) {
    const { buffer } = writer;
    for (let index = 0; index < length; index++) buffer[writer.offset++] = value.charCodeAt(index);
  } else {
    writer.offset += writer.buffer.write(value, writer.offset, "utf8");
  }
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

/** A Connection's bytes. */
export function encodeConnection(connection: Connection): Uint8Array {
  return writeConnection(connection) ?? toBinary(ConnectionSchema, connection);
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
  for (const scope of connection.scopes) size += elementSize(5, scope);
  for (const [field, time] of times) {
    if (time === undefined) continue;
    const body = timestampBody(time);
    if (body === undefined) return undefined;
    bodies.push({ field, body });
    size += lengthDelimitedSize(field, body.size);
  }
  const writer = new Writer(Buffer.allocUnsafe(size));
  writeString(writer, 1, connection.id);
  writeString(writer, 2, connection.sourceOrganizationId);
  writeString(writer, 3, connection.destinationOrganizationId);
  writeString(writer, 4, connection.name);
  for (const scope of connection.scopes) writeElement(writer, 5, scope);
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
    (connection === undefined ? 0 : lengthDelimitedSize(4, connection.length));
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
    size += lengthDelimitedSize(1, encoded.size);
  }
  const writer = new Writer(Buffer.allocUnsafe(size));
  for (const encoded of results) {
    writer.tag(1, LENGTH_DELIMITED);
    writer.varint(encoded.size);
    encoded.write(writer);
  }
  return writer.buffer;
}

export function encodeGetConnectionResponse(response: GetConnectionResponse): Uint8Array {
  if (hasUnknown(response)) return toBinary(GetConnectionResponseSchema, response);
  if (response.connection === undefined) return Buffer.alloc(0);
  const connection = encodeConnection(response.connection);
  const writer = new Writer(Buffer.allocUnsafe(lengthDelimitedSize(1, connection.length)));
  writer.bytes(1, connection);
  return writer.buffer;
}

export function encodeListConnectionsResponse(response: ListConnectionsResponse): Uint8Array {
  if (hasUnknown(response)) return toBinary(ListConnectionsResponseSchema, response);
  const connections = response.connections.map(encodeConnection);
  let size = stringSize(2, response.nextPageToken);
  for (const connection of connections) size += lengthDelimitedSize(1, connection.length);
  const writer = new Writer(Buffer.allocUnsafe(size));
  for (const connection of connections) writer.bytes(1, connection);
  writeString(writer, 2, response.nextPageToken);
  return writer.buffer;
}

/** The hand-written encoders, by the message they encode; every other message goes through toBinary. */
const BINARY_ENCODERS: ReadonlyMap<string, (message: Message) => Uint8Array> = new Map<
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
  [GetConnectionResponseSchema.typeName, (message) => encodeGetConnectionResponse(message as GetConnectionResponse)],
  [
    ListConnectionsResponseSchema.typeName,
    (message) => encodeListConnectionsResponse(message as ListConnectionsResponse),
  ],
]);

// ---------------------------------------------------------------------------------------------
// Decoding

class Reader {
  constructor(
    readonly bytes: Buffer,
    public offset: number,
    readonly end: number,
  ) {}

  /** A varint up to 2^31 - 1 (tags, lengths, enum values), or undefined for anything else. */
  varint(): number | undefined {
    let value = 0;
    for (let shift = 0; shift < 35 && this.offset < this.end; shift += 7) {
      const byte = this.bytes[this.offset++] as number;
      value += (byte & 0x7f) * 2 ** shift;
      if (byte < 0x80) return value <= 0x7fffffff ? value : undefined;
    }
    return undefined;
  }

  /** A length-delimited ASCII string, or undefined (other text is left to protobuf-es's UTF-8 rules). */
  ascii(): string | undefined {
    const length = this.varint();
    if (length === undefined || this.offset + length > this.end) return undefined;
    const start = this.offset;
    for (let index = start; index < start + length; index++)
      if ((this.bytes[index] as number) >= 0x80) return undefined;
    this.offset += length;
    return this.bytes.toString("latin1", start, start + length);
  }
}

function readCheck(reader: Reader): CheckConnectionRequest | undefined {
  const check: CheckConnectionRequest = {
    $typeName: CheckConnectionRequestSchema.typeName,
    connectionId: "",
    organizationId: "",
    action: 0,
    scope: "",
  };
  while (reader.offset < reader.end) {
    const tag = reader.varint();
    let value: string | number | undefined;
    switch (tag) {
      case 1 * 8 + LENGTH_DELIMITED:
        value = check.connectionId = reader.ascii() as string;
        break;
      case 2 * 8 + LENGTH_DELIMITED:
        value = check.organizationId = reader.ascii() as string;
        break;
      case 3 * 8:
        value = check.action = reader.varint() as number;
        break;
      case 4 * 8 + LENGTH_DELIMITED:
        value = check.scope = reader.ascii() as string;
        break;
      default:
        return undefined;
    }
    if (value === undefined) return undefined;
  }
  return check;
}

function readBatch(bytes: Buffer): BatchCheckConnectionRequest | undefined {
  const batch: BatchCheckConnectionRequest = { $typeName: BatchCheckConnectionRequestSchema.typeName, checks: [] };
  const reader = new Reader(bytes, 0, bytes.length);
  while (reader.offset < reader.end) {
    if (reader.varint() !== 1 * 8 + LENGTH_DELIMITED) return undefined;
    const length = reader.varint();
    if (length === undefined || reader.offset + length > reader.end) return undefined;
    const check = readCheck(new Reader(bytes, reader.offset, reader.offset + length));
    if (check === undefined) return undefined;
    batch.checks.push(check);
    reader.offset += length;
  }
  return batch;
}

const asBuffer = (bytes: Uint8Array) =>
  Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);

/** The hand-written reader alone: undefined for what it leaves to protobuf-es (the tests check which). */
export function readCheckConnectionRequest(bytes: Uint8Array): CheckConnectionRequest | undefined {
  const buffer = asBuffer(bytes);
  return readCheck(new Reader(buffer, 0, buffer.length));
}

/** The hand-written batch reader alone: undefined for what it leaves to protobuf-es. */
export function readBatchCheckConnectionRequest(bytes: Uint8Array): BatchCheckConnectionRequest | undefined {
  return readBatch(asBuffer(bytes));
}

export function decodeCheckConnectionRequest(bytes: Uint8Array): CheckConnectionRequest {
  return readCheckConnectionRequest(bytes) ?? fromBinary(CheckConnectionRequestSchema, bytes);
}

export function decodeBatchCheckConnectionRequest(bytes: Uint8Array): BatchCheckConnectionRequest {
  return readBatchCheckConnectionRequest(bytes) ?? fromBinary(BatchCheckConnectionRequestSchema, bytes);
}

const BINARY_DECODERS: ReadonlyMap<string, (bytes: Uint8Array) => Message> = new Map<
  string,
  (bytes: Uint8Array) => Message
>([
  [CheckConnectionRequestSchema.typeName, decodeCheckConnectionRequest],
  [BatchCheckConnectionRequestSchema.typeName, decodeBatchCheckConnectionRequest],
]);

/** How the gRPC fast path decodes a request of `schema`; throws as fromBinary does on bad bytes. */
export function binaryDecoderFor(schema: DescMessage): (bytes: Uint8Array) => Message {
  return BINARY_DECODERS.get(schema.typeName) ?? ((bytes) => fromBinary(schema, bytes));
}

/** Responses encoded before they were sent (an idempotent write saves its answer's bytes), by message. */
const ENCODED = new WeakMap<Message, Uint8Array>();

/** toBinary, remembered for `message`: when it is then sent, these bytes go out and it is not encoded again. */
export function encodeForSending(schema: DescMessage, message: Message): Uint8Array {
  const bytes = toBinary(schema, message);
  ENCODED.set(message, bytes);
  return bytes;
}

/** How the gRPC fast path encodes a response of `schema`. */
export function binaryEncoderFor(schema: DescMessage): (message: Message) => Uint8Array {
  return BINARY_ENCODERS.get(schema.typeName) ?? ((message) => ENCODED.get(message) ?? toBinary(schema, message));
}
