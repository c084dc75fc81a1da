// The gRPC envelope, for every protocol that frames messages (gRPC on the fast path, gRPC-Web and
// the streaming protocols on the connect edge): reading length prefixes and flags out of the bytes
// as they arrive, the size limit, gzip, and the trailers-only answer that refuses a request. One
// layer, so that the same bad bytes get the same code, reason and words on every path.
//
// Wire format (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md): a message is a
// 1-byte flags field (bit 0: compressed), a 4-byte big-endian length and the bytes; for an error
// before any message the status travels in the only HEADERS frame ("trailers-only").

import { constants, type OutgoingHttpHeaders, type ServerHttp2Stream } from "node:http2";
import { promisify } from "node:util";
import { gunzip } from "node:zlib";
import type { RpcStatus } from "../api/status.js";
import { grpcStatusHeaders, refuse } from "./refusals.js";

export const PREFIX_BYTES = 5;
const COMPRESSED_FLAG = 0b1;
/** The message encodings this service reads and names in grpc-accept-encoding. */
export const ACCEPTED_ENCODINGS = "identity,gzip";

const gunzipAsync = promisify(gunzip);

/** One complete message as it arrived: still compressed when its flag says so. */
export interface Envelope {
  readonly compressed: boolean;
  readonly message: Buffer;
}

/**
 * Cuts arriving chunks into envelopes. Each length prefix is checked as soon as its five bytes are
 * in, so a declared-large message is refused before its bytes arrive; a unary call's second message
 * is refused once it is complete. Chunks are kept as they came and joined once per message, so a
 * body sent a byte at a time costs what it weighs. Every problem is thrown as a Refusal.
 */
export class EnvelopeReader {
  private chunks: Buffer[] = [];
  /** Bytes of `chunks` not yet read; the first chunk's first `consumed` bytes were read. */
  private buffered = 0;
  private consumed = 0;
  /** The prefix of the message being received, once its five bytes were in. */
  private pending: { readonly compressed: boolean; readonly length: number } | undefined;
  private messages = 0;

  constructor(
    private readonly maxMessageBytes: number,
    /** At most one message (unary and server-streaming requests). */
    private readonly unary: boolean,
  ) {}

  /** Takes the next chunk of the body; `next` then gives the envelopes it completes. */
  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
  }

  /**
   * The next complete envelope, or undefined until more bytes arrive. One at a time, so that a
   * caller checking each message meets the problems in the order the bytes carry them.
   */
  next(): Envelope | undefined {
    if (this.pending === undefined) {
      if (this.buffered < PREFIX_BYTES) return undefined;
      const prefix = this.take(PREFIX_BYTES);
      const flags = prefix[0] as number;
      const length = prefix.readUInt32BE(1);
      if (length > this.maxMessageBytes) throw refuse.tooLarge(this.maxMessageBytes);
      if ((flags & ~COMPRESSED_FLAG) !== 0) throw refuse.malformed("a message carries flags other than compressed");
      this.pending = { compressed: (flags & COMPRESSED_FLAG) !== 0, length };
    }
    if (this.buffered < this.pending.length) return undefined;
    this.messages++;
    if (this.unary && this.messages > 1) throw refuse.notOneMessage();
    const envelope = { compressed: this.pending.compressed, message: this.take(this.pending.length) };
    this.pending = undefined;
    return envelope;
  }

  /** The body ended: it must not stop inside a message, and a unary call must have had its one. */
  end(): void {
    if (this.pending !== undefined || this.buffered > 0) {
      throw refuse.malformed("the request ends inside a length-prefixed message");
    }
    if (this.unary && this.messages !== 1) throw refuse.notOneMessage();
  }

  /** Drops what is buffered (a refused or abandoned request). */
  release(): void {
    this.chunks = [];
    this.buffered = 0;
    this.consumed = 0;
  }

  /** The next `count` buffered bytes: a view when one chunk holds them, else one copy. */
  private take(count: number): Buffer {
    this.buffered -= count;
    const first = this.chunks[0];
    if (count === 0) return Buffer.alloc(0);
    if (first !== undefined && first.length - this.consumed >= count) {
      const bytes = first.subarray(this.consumed, this.consumed + count);
      this.consumed += count;
      if (this.consumed === first.length) {
        this.chunks.shift();
        this.consumed = 0;
      }
      return bytes;
    }
    const bytes = Buffer.allocUnsafe(count);
    let filled = 0;
    while (filled < count) {
      const chunk = this.chunks[0] as Buffer;
      const copied = chunk.copy(bytes, filled, this.consumed, Math.min(chunk.length, this.consumed + count - filled));
      filled += copied;
      this.consumed += copied;
      if (this.consumed === chunk.length) {
        this.chunks.shift();
        this.consumed = 0;
      }
    }
    return bytes;
  }
}

/** The message's bytes: gunzipped when flagged compressed (allowed only when the call named gzip). */
export function openEnvelope(envelope: Envelope, gzipped: boolean, maxMessageBytes: number): Promise<Buffer> | Buffer {
  if (!envelope.compressed) return envelope.message;
  if (!gzipped) throw refuse.malformed("a message is flagged compressed but no encoding was named");
  return gunzipMessage(envelope.message, maxMessageBytes);
}

/** gunzip within the size limit; a bomb is REQUEST_TOO_LARGE, anything else not gzip MALFORMED_REQUEST. */
export async function gunzipMessage(message: Uint8Array, maxMessageBytes: number): Promise<Buffer> {
  try {
    return await gunzipAsync(message, { maxOutputLength: maxMessageBytes });
  } catch (error) {
    if (error instanceof RangeError) throw refuse.tooLarge(maxMessageBytes);
    throw refuse.malformed("the request message is not valid gzip");
  }
}

/** An uncompressed envelope around `message`. */
export function frame(message: Uint8Array): Buffer {
  const envelope = Buffer.allocUnsafe(PREFIX_BYTES + message.length);
  envelope[0] = 0;
  envelope.writeUInt32BE(message.length, 1);
  envelope.set(message, PREFIX_BYTES);
  return envelope;
}

/** The headers of a trailers-only answer (sent with HTTP 200): the status where trailers would carry it. */
export function trailersOnlyHeaders(contentType: string, status: RpcStatus, requestId: string): OutgoingHttpHeaders {
  return {
    "content-type": contentType,
    "grpc-accept-encoding": ACCEPTED_ENCODINGS,
    ...grpcStatusHeaders(status),
    "x-request-id": requestId,
  };
}

/**
 * Answers a gRPC or gRPC-Web stream with its status alone, unless it is gone or already answered.
 * A client still sending is then asked to stop: RST_STREAM(NO_ERROR) after a complete response
 * (RFC 9113 8.1), which node sends once the answer has been flushed.
 */
export function respondTrailersOnly(
  stream: ServerHttp2Stream,
  contentType: string,
  status: RpcStatus,
  requestId: string,
): void {
  if (stream.destroyed || stream.closed || stream.headersSent) return;
  stream.respond({ ":status": 200, ...trailersOnlyHeaders(contentType, status, requestId) }, { endStream: true });
  if (!stream.readableEnded) stream.close(constants.NGHTTP2_NO_ERROR);
}
