// The request body of a call that connect-node serves, read and checked by the transport first.
//
// connect-node answers bytes it cannot parse with INTERNAL and its decoder's words, a message over
// its limit with its setting's name, and a declared-large message only once it has all arrived.
// So the body goes through here before connect-node sees it: each length prefix is checked
// against the limit as soon as its five bytes arrive, flags and compression are checked, every
// message is decoded once to prove that it parses, compressed messages are handed on decompressed,
// a unary call must carry exactly one message, and the whole body must arrive within the body read
// timeout and the client's deadline, both counted from the request's first byte. Whatever is wrong
// becomes a Refusal, which connect-node sends in the request's own protocol. Framing, limits and
// gzip are envelope.ts's, shared with the gRPC fast path.

import type { Readable } from "node:stream";
import { type DescMethod, fromBinary, fromJsonString } from "@bufbuild/protobuf";
import { EnvelopeReader, frame, gunzipMessage, openEnvelope } from "./envelope.js";
import type { PendingRead, ReadDeadlines } from "./limits.js";
import { Refusal, refuse, toConnectError } from "./refusals.js";

const JSON_OPTIONS = { ignoreUnknownFields: true } as const;

export interface BodyShape {
  readonly method: DescMethod;
  /** Length-prefixed messages (gRPC, gRPC-Web, Connect streaming) or one bare message (Connect unary). */
  readonly enveloped: boolean;
  readonly binary: boolean;
  /** The request's message encoding was gzip (identity otherwise; others were refused earlier). */
  readonly gzipped: boolean;
  readonly maxMessageBytes: number;
  /** Epoch ms by which the whole body must have arrived, and what to answer if it has not. */
  readonly readBy: number;
  readonly readByIsDeadline: boolean;
  /** The body read timeout, named in the answer when the body was too slow. */
  readonly readTimeoutMs: number;
}

/**
 * Pulls chunks from a Readable one at a time, and can be expired while it waits: a timeout answers
 * the call instead of tearing down the stream.
 */
class ChunkReader implements PendingRead {
  private readonly queue: Buffer[] = [];
  private ended = false;
  private failure: unknown;
  private waiting: { resolve: (chunk: Buffer | null) => void; reject: (error: unknown) => void } | undefined;

  constructor(
    private readonly source: Readable,
    readonly readBy: number,
    private readonly onExpire: () => Refusal,
    private readonly deadlines: ReadDeadlines,
  ) {
    source.on("data", this.onData);
    source.once("end", this.onEnd);
    source.once("error", this.onError);
    source.once("aborted", this.onAborted);
    deadlines.add(this);
  }

  /** Whether the client finished sending its body. */
  get complete(): boolean {
    return this.ended && this.queue.length === 0;
  }

  next(): Promise<Buffer | null> {
    const chunk = this.queue.shift();
    if (chunk !== undefined) {
      if (this.queue.length === 0) this.source.resume();
      return Promise.resolve(chunk);
    }
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (this.ended) return Promise.resolve(null);
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject };
    });
  }

  expire(): void {
    this.fail(this.onExpire());
  }

  /** Stops reading; the client's remaining bytes are left to the connection's owner. */
  release(): void {
    this.deadlines.delete(this);
    this.source.off("data", this.onData);
    this.source.off("end", this.onEnd);
    this.source.off("error", this.onError);
    this.source.off("aborted", this.onAborted);
  }

  private readonly onData = (chunk: Buffer) => {
    if (this.waiting !== undefined) {
      const { resolve } = this.waiting;
      this.waiting = undefined;
      resolve(chunk);
      return;
    }
    this.queue.push(chunk);
    this.source.pause();
  };

  private readonly onEnd = () => {
    this.ended = true;
    this.deadlines.delete(this);
    if (this.waiting !== undefined) {
      const { resolve } = this.waiting;
      this.waiting = undefined;
      resolve(null);
    }
  };

  private readonly onError = (error: unknown) => this.fail(error);
  private readonly onAborted = () => this.fail(new Error("the client aborted the request"));

  private fail(error: unknown): void {
    this.deadlines.delete(this);
    if (this.failure !== undefined) return;
    this.failure = error;
    if (this.waiting !== undefined) {
      const { reject } = this.waiting;
      this.waiting = undefined;
      reject(error);
    }
  }
}

/** A checked request body: iterate it once, as connect-node does. */
export class CheckedBody implements AsyncIterable<Uint8Array> {
  /** Set when a Refusal ended the read: the owner closes what the client still sends. */
  refusal: Refusal | undefined;
  private readonly reader: ChunkReader;

  /** `onRefusal` hears of a refusal first, before connect-node does. */
  constructor(
    source: Readable,
    private readonly shape: BodyShape,
    deadlines: ReadDeadlines,
    private readonly onRefusal: (refusal: Refusal) => void,
  ) {
    this.reader = new ChunkReader(
      source,
      shape.readBy,
      () => (shape.readByIsDeadline ? refuse.deadlinePassed() : refuse.bodyTooSlow(shape.readTimeoutMs)),
      deadlines,
    );
  }

  /** Whether the client sent its whole body (false after an early refusal). */
  get complete(): boolean {
    return this.reader.complete;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Uint8Array> {
    try {
      if (this.shape.enveloped) yield* this.envelopes();
      else yield await this.bareMessage();
    } catch (error) {
      if (!(error instanceof Refusal)) throw error;
      // connect-node sends a ConnectError as it is, in the request's protocol; anything else would
      // become INTERNAL.
      this.refusal = error;
      this.onRefusal(error);
      throw toConnectError(error.status);
    } finally {
      this.reader.release();
    }
  }

  private async bareMessage(): Promise<Uint8Array> {
    const { maxMessageBytes } = this.shape;
    const chunks: Buffer[] = [];
    let received = 0;
    for (let chunk = await this.reader.next(); chunk !== null; chunk = await this.reader.next()) {
      received += chunk.length;
      // gzip may shrink well below the limit; the limit applies to what arrives too.
      if (received > maxMessageBytes) throw refuse.tooLarge(maxMessageBytes);
      chunks.push(chunk);
    }
    let message: Uint8Array = Buffer.concat(chunks);
    if (this.shape.gzipped) message = await gunzipMessage(message, maxMessageBytes);
    this.check(message);
    return message;
  }

  private async *envelopes(): AsyncGenerator<Uint8Array> {
    const { maxMessageBytes, method, gzipped } = this.shape;
    const envelopes = new EnvelopeReader(
      maxMessageBytes,
      method.methodKind === "unary" || method.methodKind === "server_streaming",
    );
    for (let chunk = await this.reader.next(); chunk !== null; chunk = await this.reader.next()) {
      envelopes.push(chunk);
      for (let envelope = envelopes.next(); envelope !== undefined; envelope = envelopes.next()) {
        const message = await openEnvelope(envelope, gzipped, maxMessageBytes);
        this.check(message);
        // connect-node reads what it is handed as identity-encoded.
        yield frame(message);
      }
    }
    envelopes.end();
  }

  /** Decodes the message as connect-node will, so that connect-node never meets one it cannot parse. */
  private check(message: Uint8Array): void {
    const { method, binary } = this.shape;
    try {
      if (binary) fromBinary(method.input, message);
      else fromJsonString(method.input, new TextDecoder().decode(message), JSON_OPTIONS);
    } catch {
      throw refuse.notAMessage(method, binary ? "binary" : "json");
    }
  }
}
