// A minimal HTTP/2 client for unary gRPC on a plain TCP socket (h2c, prior knowledge), for the
// load client. node:http2 spends about as much CPU per request as a @grpc/grpc-js server does to
// answer it, so on two cores it would be a bottleneck of its own; this one does only what a unary
// call needs: HEADERS (+ DATA with END_STREAM) out, and HEADERS, DATA and trailers back.
// Handled: HPACK decoding (static and dynamic table, Huffman strings), CONTINUATION, padding,
// flow control both ways, SETTINGS, PING, WINDOW_UPDATE, RST_STREAM and GOAWAY.

import net from "node:net";

export interface Answer {
  /** grpc-status from the trailers (or a trailers-only answer), undefined when none came. */
  readonly status: string | undefined;
  readonly message: string | undefined;
  /** The gRPC message frames as received (5-byte prefix included). */
  readonly body: Buffer;
  /** A transport failure: HTTP status, stream reset, GOAWAY, closed socket. */
  readonly error: string | undefined;
}

const FRAME = {
  DATA: 0,
  HEADERS: 1,
  RST_STREAM: 3,
  SETTINGS: 4,
  PING: 6,
  GOAWAY: 7,
  WINDOW_UPDATE: 8,
  CONTINUATION: 9,
};
const FLAG = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4, PADDED: 0x8, PRIORITY: 0x20 };
const MAX_WINDOW = 2 ** 31 - 1;
const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

// ---------------------------------------------------------------------------------------------
// HPACK (RFC 7541)

const STATIC_TABLE: readonly (readonly [string, string])[] = [
  [":authority", ""],
  [":method", "GET"],
  [":method", "POST"],
  [":path", "/"],
  [":path", "/index.html"],
  [":scheme", "http"],
  [":scheme", "https"],
  [":status", "200"],
  [":status", "204"],
  [":status", "206"],
  [":status", "304"],
  [":status", "400"],
  [":status", "404"],
  [":status", "500"],
  ["accept-charset", ""],
  ["accept-encoding", "gzip, deflate"],
  ["accept-language", ""],
  ["accept-ranges", ""],
  ["accept", ""],
  ["access-control-allow-origin", ""],
  ["age", ""],
  ["allow", ""],
  ["authorization", ""],
  ["cache-control", ""],
  ["content-disposition", ""],
  ["content-encoding", ""],
  ["content-language", ""],
  ["content-length", ""],
  ["content-location", ""],
  ["content-range", ""],
  ["content-type", ""],
  ["cookie", ""],
  ["date", ""],
  ["etag", ""],
  ["expect", ""],
  ["expires", ""],
  ["from", ""],
  ["host", ""],
  ["if-match", ""],
  ["if-modified-since", ""],
  ["if-none-match", ""],
  ["if-range", ""],
  ["if-unmodified-since", ""],
  ["last-modified", ""],
  ["link", ""],
  ["location", ""],
  ["max-forwards", ""],
  ["proxy-authenticate", ""],
  ["proxy-authorization", ""],
  ["range", ""],
  ["referer", ""],
  ["refresh", ""],
  ["retry-after", ""],
  ["server", ""],
  ["set-cookie", ""],
  ["strict-transport-security", ""],
  ["transfer-encoding", ""],
  ["user-agent", ""],
  ["vary", ""],
  ["via", ""],
  ["www-authenticate", ""],
];

/** Code lengths of the HPACK Huffman code (RFC 7541 Appendix B), symbols 0-255; it is canonical. */
// biome-ignore format: a table
const HUFFMAN_LENGTHS = [
  13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
  6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
  13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
  15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
  20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
  22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
  26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
  20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

/** Canonical decoding tables: per code length, the first code, and the symbols in code order. */
const HUFFMAN = (() => {
  const symbols = HUFFMAN_LENGTHS.map((length, symbol) => ({ length, symbol })).sort(
    (a, b) => a.length - b.length || a.symbol - b.symbol,
  );
  const firstCode = new Array<number>(31).fill(0);
  const firstIndex = new Array<number>(31).fill(0);
  const count = new Array<number>(31).fill(0);
  for (const { length } of symbols) count[length] = (count[length] ?? 0) + 1;
  let code = 0;
  let index = 0;
  for (let length = 1; length <= 30; length++) {
    firstCode[length] = code;
    firstIndex[length] = index;
    code = (code + (count[length] ?? 0)) * 2;
    index += count[length] ?? 0;
  }
  return { firstCode, firstIndex, count, ordered: symbols.map((entry) => entry.symbol) };
})();

function huffmanDecode(bytes: Buffer): string {
  const out: number[] = [];
  let code = 0;
  let length = 0;
  for (const byte of bytes) {
    for (let bit = 7; bit >= 0; bit--) {
      code = code * 2 + ((byte >> bit) & 1);
      length++;
      const offset = code - (HUFFMAN.firstCode[length] ?? 0);
      if (offset >= 0 && offset < (HUFFMAN.count[length] ?? 0)) {
        out.push(HUFFMAN.ordered[(HUFFMAN.firstIndex[length] ?? 0) + offset] ?? 0);
        code = 0;
        length = 0;
      }
    }
  }
  // What is left is the EOS prefix used as padding (all ones, under 8 bits).
  return Buffer.from(out).toString("latin1");
}

class HpackDecoder {
  #table: [string, string][] = [];
  #size = 0;
  #maxSize = 4096;
  #block: Buffer = Buffer.alloc(0);
  #pos = 0;

  decode(block: Buffer): [string, string][] {
    this.#block = block;
    this.#pos = 0;
    const headers: [string, string][] = [];
    while (this.#pos < block.length) {
      const first = block[this.#pos] ?? 0;
      if (first & 0x80) {
        headers.push(this.#entry(this.#integer(7)));
      } else if (first & 0x40) {
        const header = this.#literal(6);
        this.#insert(header);
        headers.push(header);
      } else if (first & 0x20) {
        this.#maxSize = this.#integer(5);
        this.#evict();
      } else {
        headers.push(this.#literal(4)); // without indexing, or never indexed
      }
    }
    return headers;
  }

  #integer(prefixBits: number): number {
    const mask = (1 << prefixBits) - 1;
    let value = (this.#block[this.#pos++] ?? 0) & mask;
    if (value < mask) return value;
    let factor = 1;
    for (;;) {
      const byte = this.#block[this.#pos++] ?? 0;
      value += (byte & 0x7f) * factor;
      factor *= 128;
      if ((byte & 0x80) === 0) return value;
    }
  }

  #string(): string {
    const huffman = ((this.#block[this.#pos] ?? 0) & 0x80) !== 0;
    const length = this.#integer(7);
    const bytes = this.#block.subarray(this.#pos, this.#pos + length);
    this.#pos += length;
    return huffman ? huffmanDecode(bytes) : bytes.toString("latin1");
  }

  #literal(prefixBits: number): [string, string] {
    const nameIndex = this.#integer(prefixBits);
    const name = nameIndex === 0 ? this.#string() : this.#entry(nameIndex)[0];
    return [name, this.#string()];
  }

  #entry(index: number): [string, string] {
    const entry = index <= STATIC_TABLE.length ? STATIC_TABLE[index - 1] : this.#table[index - STATIC_TABLE.length - 1];
    if (entry === undefined || index === 0) throw new Error(`HPACK: no table entry ${index}`);
    return [entry[0], entry[1]];
  }

  #insert(header: [string, string]): void {
    this.#table.unshift(header);
    this.#size += header[0].length + header[1].length + 32;
    this.#evict();
  }

  #evict(): void {
    while (this.#size > this.#maxSize) {
      const dropped = this.#table.pop();
      if (dropped === undefined) break;
      this.#size -= dropped[0].length + dropped[1].length + 32;
    }
  }
}

function encodeInteger(value: number, prefixBits: number, firstByteFlags: number): number[] {
  const mask = (1 << prefixBits) - 1;
  if (value < mask) return [firstByteFlags | value];
  const bytes = [firstByteFlags | mask];
  let rest = value - mask;
  while (rest >= 128) {
    bytes.push((rest % 128) | 0x80);
    rest = Math.floor(rest / 128);
  }
  bytes.push(rest);
  return bytes;
}

/**
 * A request's header block: literal fields without indexing (names from the static table where
 * it has them), so a block is the same on every connection and can be encoded once, up front.
 */
export function encodeHeaderBlock(headers: readonly (readonly [string, string])[]): Buffer {
  const bytes: number[] = [];
  for (const [name, value] of headers) {
    if (name === ":method" && value === "POST") {
      bytes.push(0x83);
      continue;
    }
    if (name === ":scheme" && value === "http") {
      bytes.push(0x86);
      continue;
    }
    const nameIndex = STATIC_TABLE.findIndex(([staticName]) => staticName === name) + 1;
    bytes.push(...encodeInteger(nameIndex, 4, 0x00));
    if (nameIndex === 0) {
      bytes.push(...encodeInteger(name.length, 7, 0x00), ...Buffer.from(name, "latin1"));
    }
    bytes.push(...encodeInteger(Buffer.byteLength(value, "latin1"), 7, 0x00), ...Buffer.from(value, "latin1"));
  }
  return Buffer.from(bytes);
}

// ---------------------------------------------------------------------------------------------
// Connection

interface Stream {
  readonly done: (answer: Answer) => void;
  headersSeen: boolean;
  status: string | undefined;
  message: string | undefined;
  httpStatus: string | undefined;
  chunks: Buffer[];
}

function percentDecode(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

function frameHeader(target: Buffer, offset: number, length: number, type: number, flags: number, streamId: number) {
  target.writeUIntBE(length, offset, 3);
  target[offset + 3] = type;
  target[offset + 4] = flags;
  target.writeUInt32BE(streamId, offset + 5);
}

function frame(type: number, flags: number, streamId: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const out = Buffer.allocUnsafe(9 + payload.length);
  frameHeader(out, 0, payload.length, type, flags, streamId);
  payload.copy(out, 9);
  return out;
}

export class GrpcConnection {
  readonly #socket: net.Socket;
  readonly #decoder = new HpackDecoder();
  readonly #streams = new Map<number, Stream>();
  #nextStreamId = 1;
  #pending: Buffer | undefined;
  /** A header block continued in CONTINUATION frames: its stream, end of stream, fragments. */
  #continued: { streamId: number; endStream: boolean; fragments: Buffer[] } | undefined;
  #sendWindow = 65_535;
  #waiting: { streamId: number; bytes: Buffer; dataLength: number }[] = [];
  #received = 0;
  #corked = false;
  #failure: string | undefined;

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    socket.on("data", (chunk: Buffer) => this.#onData(chunk));
    socket.on("error", (error) => this.#fail(`socket error: ${error.message}`));
    socket.on("close", () => this.#fail("connection closed"));
  }

  static connect(host: string, port: number): Promise<GrpcConnection> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host, port, noDelay: true });
      socket.once("error", reject);
      socket.once("connect", () => {
        socket.off("error", reject);
        const settings = Buffer.alloc(12);
        settings.writeUInt16BE(0x2, 0); // ENABLE_PUSH
        settings.writeUInt32BE(0, 2);
        settings.writeUInt16BE(0x4, 6); // INITIAL_WINDOW_SIZE
        settings.writeUInt32BE(MAX_WINDOW, 8);
        const windowUpdate = Buffer.alloc(4);
        windowUpdate.writeUInt32BE(MAX_WINDOW - 65_535, 0);
        socket.write(
          Buffer.concat([
            PREFACE,
            frame(FRAME.SETTINGS, 0, 0, settings),
            frame(FRAME.WINDOW_UPDATE, 0, 0, windowUpdate),
          ]),
        );
        resolve(new GrpcConnection(socket));
      });
    });
  }

  /** Sends one unary call: `headerBlock` from encodeHeaderBlock, `body` a framed gRPC message. */
  call(headerBlock: Buffer, body: Buffer, done: (answer: Answer) => void): void {
    if (this.#failure !== undefined) {
      done({ status: undefined, message: undefined, body: Buffer.alloc(0), error: this.#failure });
      return;
    }
    const streamId = this.#nextStreamId;
    this.#nextStreamId += 2;
    this.#streams.set(streamId, {
      done,
      headersSeen: false,
      status: undefined,
      message: undefined,
      httpStatus: undefined,
      chunks: [],
    });
    const bytes = Buffer.allocUnsafe(18 + headerBlock.length + body.length);
    frameHeader(bytes, 0, headerBlock.length, FRAME.HEADERS, FLAG.END_HEADERS, streamId);
    headerBlock.copy(bytes, 9);
    frameHeader(bytes, 9 + headerBlock.length, body.length, FRAME.DATA, FLAG.END_STREAM, streamId);
    body.copy(bytes, 18 + headerBlock.length);
    if (this.#waiting.length > 0 || body.length > this.#sendWindow) {
      this.#waiting.push({ streamId, bytes, dataLength: body.length });
    } else {
      this.#sendWindow -= body.length;
      this.#write(bytes);
    }
  }

  close(): void {
    this.#failure ??= "closed by the client";
    this.#socket.end();
  }

  /** Writes of one event-loop turn go out in one syscall. */
  #write(bytes: Buffer): void {
    if (!this.#corked) {
      this.#corked = true;
      this.#socket.cork();
      process.nextTick(() => {
        this.#corked = false;
        this.#socket.uncork();
      });
    }
    this.#socket.write(bytes);
  }

  #onData(chunk: Buffer): void {
    const data = this.#pending === undefined ? chunk : Buffer.concat([this.#pending, chunk]);
    let pos = 0;
    while (data.length - pos >= 9) {
      const length = data.readUIntBE(pos, 3);
      if (data.length - pos < 9 + length) break;
      const type = data[pos + 3] ?? 0;
      const flags = data[pos + 4] ?? 0;
      const streamId = data.readUInt32BE(pos + 5) & 0x7fffffff;
      const payload = data.subarray(pos + 9, pos + 9 + length);
      pos += 9 + length;
      try {
        this.#onFrame(type, flags, streamId, payload);
      } catch (error) {
        this.#fail(`protocol error: ${(error as Error).message}`);
        this.#socket.destroy();
        return;
      }
    }
    this.#pending = pos < data.length ? data.subarray(pos) : undefined;
  }

  #onFrame(type: number, flags: number, streamId: number, payload: Buffer): void {
    switch (type) {
      case FRAME.DATA: {
        this.#received += payload.length;
        if (this.#received > MAX_WINDOW / 2) {
          const increment = Buffer.alloc(4);
          increment.writeUInt32BE(this.#received, 0);
          this.#write(frame(FRAME.WINDOW_UPDATE, 0, 0, increment));
          this.#received = 0;
        }
        const stream = this.#streams.get(streamId);
        if (stream === undefined) return;
        stream.chunks.push(flags & FLAG.PADDED ? payload.subarray(1, payload.length - (payload[0] ?? 0)) : payload);
        if (flags & FLAG.END_STREAM) this.#finish(streamId, undefined);
        return;
      }
      case FRAME.HEADERS: {
        let block = payload;
        if (flags & FLAG.PADDED) block = block.subarray(1, block.length - (payload[0] ?? 0));
        if (flags & FLAG.PRIORITY) block = block.subarray(5);
        const endStream = (flags & FLAG.END_STREAM) !== 0;
        if (flags & FLAG.END_HEADERS) this.#onHeaders(streamId, endStream, block);
        else this.#continued = { streamId, endStream, fragments: [Buffer.from(block)] };
        return;
      }
      case FRAME.CONTINUATION: {
        const continued = this.#continued;
        if (continued === undefined || continued.streamId !== streamId) throw new Error("unexpected CONTINUATION");
        continued.fragments.push(Buffer.from(payload));
        if (flags & FLAG.END_HEADERS) {
          this.#continued = undefined;
          this.#onHeaders(streamId, continued.endStream, Buffer.concat(continued.fragments));
        }
        return;
      }
      case FRAME.RST_STREAM:
        this.#finish(streamId, `stream reset by the server (code ${payload.readUInt32BE(0)})`);
        return;
      case FRAME.SETTINGS:
        if ((flags & FLAG.ACK) === 0) this.#write(frame(FRAME.SETTINGS, FLAG.ACK, 0));
        return;
      case FRAME.PING:
        if ((flags & FLAG.ACK) === 0) this.#write(frame(FRAME.PING, FLAG.ACK, 0, payload));
        return;
      case FRAME.GOAWAY: {
        const lastStreamId = payload.readUInt32BE(0) & 0x7fffffff;
        const reason = `GOAWAY (code ${payload.readUInt32BE(4)})`;
        this.#failure ??= reason;
        for (const id of [...this.#streams.keys()]) if (id > lastStreamId) this.#finish(id, reason);
        return;
      }
      case FRAME.WINDOW_UPDATE:
        if (streamId === 0) {
          this.#sendWindow += payload.readUInt32BE(0) & 0x7fffffff;
          while (this.#waiting.length > 0 && (this.#waiting[0]?.dataLength ?? 0) <= this.#sendWindow) {
            const next = this.#waiting.shift();
            if (next === undefined) break;
            this.#sendWindow -= next.dataLength;
            this.#write(next.bytes);
          }
        }
        return;
      default:
        return; // PRIORITY and unknown frame types are ignored
    }
  }

  #onHeaders(streamId: number, endStream: boolean, block: Buffer): void {
    // Every block is decoded, whoever it is for, to keep the dynamic table in step.
    const headers = this.#decoder.decode(block);
    const stream = this.#streams.get(streamId);
    if (stream === undefined) return;
    for (const [name, value] of headers) {
      if (name === "grpc-status") stream.status = value;
      else if (name === "grpc-message") stream.message = percentDecode(value);
      else if (name === ":status" && !stream.headersSeen) stream.httpStatus = value;
    }
    stream.headersSeen = true;
    if (endStream) this.#finish(streamId, undefined);
  }

  #finish(streamId: number, error: string | undefined): void {
    const stream = this.#streams.get(streamId);
    if (stream === undefined) return;
    this.#streams.delete(streamId);
    const httpError =
      stream.httpStatus !== undefined && stream.httpStatus !== "200" ? `HTTP status ${stream.httpStatus}` : undefined;
    const chunks = stream.chunks;
    stream.done({
      status: stream.status,
      message: stream.message,
      body: chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks),
      error: error ?? httpError,
    });
  }

  #fail(reason: string): void {
    this.#failure ??= reason;
    for (const id of [...this.#streams.keys()]) this.#finish(id, reason);
    for (const waiting of this.#waiting.splice(0)) this.#finish(waiting.streamId, reason);
  }
}
