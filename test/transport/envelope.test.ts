// The envelope layer (src/transport/envelope.ts) on both paths that read envelopes: every case goes
// through the gRPC fast path (application/grpc) and through the connect edge (gRPC-Web, read by
// request-body.ts's CheckedBody), and both must give the same code, reason and message. Then what
// the layer holds on to: a body arriving a byte at a time is not copied over and over, and a
// stream reset while its body arrives is let go at once, not at its read deadline.

import http2 from "node:http2";
import type net from "node:net";
import { Readable } from "node:stream";
import { gzipSync } from "node:zlib";
import { create, toBinary } from "@bufbuild/protobuf";
import pino from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { GetOrganizationRequestSchema, OrganizationService } from "../../gen/connections/v1/organization_service_pb.js";
import { GrpcFastPath } from "../../src/transport/grpc-fast-path.js";
import { DEFAULT_TRANSPORT_LIMITS, type PendingRead, ReadDeadlines } from "../../src/transport/limits.js";
import { CheckedBody } from "../../src/transport/request-body.js";
import { envelope, h2Open, type WireAnswer } from "../support/wire.js";
import { bearer, createTestPipeline, MAX_REQUEST_BYTES, Stubs, startTestServer, type TestServer } from "./harness.js";

const GET_ORGANIZATION = "/connections.v1.OrganizationService/GetOrganization";
const PATHS = [
  { name: "gRPC fast path", contentType: "application/grpc" },
  { name: "connect edge", contentType: "application/grpc-web+proto" },
] as const;

const request = (id: string) =>
  Buffer.from(toBinary(GetOrganizationRequestSchema, create(GetOrganizationRequestSchema, { id })));
const declared = (length: number, flags = 0) => {
  const bytes = Buffer.alloc(5);
  bytes[0] = flags;
  bytes.writeUInt32BE(length, 1);
  return bytes;
};
const bytewise = (bytes: Buffer) => [...bytes].map((byte) => Buffer.from([byte]));

interface Case {
  readonly name: string;
  readonly chunks: readonly Buffer[];
  readonly headers?: Record<string, string>;
  /** False: the body is left open, so the answer must come before the client has finished. */
  readonly end?: boolean;
  readonly reason: string | undefined;
  readonly message?: string;
}

const CASES: readonly Case[] = [
  { name: "one message", chunks: [envelope(request("org_a"))], reason: undefined },
  { name: "one message, a byte at a time", chunks: bytewise(envelope(request("org_a"))), reason: undefined },
  {
    name: "one gzipped message",
    headers: { "grpc-encoding": "gzip" },
    chunks: [envelope(gzipSync(request("org_a")), 1)],
    reason: undefined,
  },
  {
    name: "a message declared larger than the limit, before its bytes",
    chunks: [declared(MAX_REQUEST_BYTES + 1)],
    end: false,
    reason: "REQUEST_TOO_LARGE",
  },
  { name: "flags other than compressed", chunks: [envelope(request("org_a"), 2)], reason: "MALFORMED_REQUEST" },
  {
    name: "a compressed message when no encoding was named",
    chunks: [envelope(gzipSync(request("org_a")), 1)],
    reason: "MALFORMED_REQUEST",
    message: "a message is flagged compressed but no encoding was named",
  },
  {
    name: "bytes flagged compressed that are not gzip",
    headers: { "grpc-encoding": "gzip" },
    chunks: [envelope(Buffer.from("not gzip at all"), 1)],
    reason: "MALFORMED_REQUEST",
    message: "the request message is not valid gzip",
  },
  {
    name: "gzip that inflates past the limit",
    headers: { "grpc-encoding": "gzip" },
    chunks: [envelope(gzipSync(Buffer.alloc(MAX_REQUEST_BYTES * 4)), 1)],
    reason: "REQUEST_TOO_LARGE",
  },
  {
    name: "an encoding other than gzip",
    headers: { "grpc-encoding": "br" },
    chunks: [],
    reason: "UNSUPPORTED_ENCODING",
  },
  { name: "no message", chunks: [], reason: "NOT_ONE_MESSAGE" },
  {
    name: "two messages",
    chunks: [Buffer.concat([envelope(request("org_a")), envelope(request("org_a"))])],
    reason: "NOT_ONE_MESSAGE",
  },
  {
    name: "a body that ends inside a message",
    chunks: [declared(10), Buffer.from("abc")],
    reason: "MALFORMED_REQUEST",
    message: "the request ends inside a length-prefixed message",
  },
  { name: "a body that ends inside a prefix", chunks: [Buffer.from([0, 0])], reason: "MALFORMED_REQUEST" },
  {
    name: "bytes that are not the request message",
    chunks: [envelope(Buffer.from([0xff, 0xff]))],
    reason: "MALFORMED_REQUEST",
  },
  {
    name: "a body still arriving when the call's deadline passes",
    headers: { "grpc-timeout": "300m" },
    chunks: [declared(10), Buffer.from("abc")],
    end: false,
    reason: "DEADLINE_EXCEEDED",
    message: "the deadline passed before the request arrived completely",
  },
];

function call(session: http2.ClientHttp2Session, contentType: string, test: Case): Promise<WireAnswer> {
  const { stream, answer } = h2Open(session, {
    path: GET_ORGANIZATION,
    headers: { "content-type": contentType, te: "trailers", ...bearer("dev-provisioning"), ...test.headers },
    body: Buffer.alloc(0),
  });
  for (const chunk of test.chunks) stream.write(chunk);
  if (test.end !== false) stream.end();
  return answer;
}

const outcome = (answer: WireAnswer) => ({
  code: answer.code,
  reason: answer.errorInfo?.reason,
  message: answer.message,
});

describe("one envelope layer for the fast path and the connect edge", () => {
  let server: TestServer;
  let session: http2.ClientHttp2Session;

  beforeAll(async () => {
    server = await startTestServer();
    session = http2.connect(server.baseUrl);
  });

  afterAll(async () => {
    session.close();
    await server.running.close(1_000);
  });

  it.each(CASES)("$name: the same answer on both paths", async (test) => {
    const answers = [];
    for (const path of PATHS)
      answers.push({ path: path.name, ...outcome(await call(session, path.contentType, test)) });
    const [fast, edge] = answers;
    expect(fast?.reason).toBe(test.reason);
    if (test.reason === undefined) expect(fast?.code).toBe(0);
    if (test.message !== undefined) expect(fast?.message).toBe(test.message);
    expect({ ...edge, path: undefined }).toEqual({ ...fast, path: undefined });
  });

  it("names the body read timeout alike on both paths when a body is too slow", async () => {
    const slow = await startTestServer({ bodyReadTimeoutMs: 1_000 });
    const slowSession = http2.connect(slow.baseUrl);
    try {
      const test: Case = { name: "slow", chunks: [declared(10)], end: false, reason: "DEADLINE_EXCEEDED" };
      const answers = [];
      for (const path of PATHS) answers.push(outcome(await call(slowSession, path.contentType, test)));
      for (const answer of answers) {
        expect(answer).toMatchObject({
          reason: "DEADLINE_EXCEEDED",
          message: "the request did not arrive completely within 1000 ms",
        });
      }
    } finally {
      slowSession.close();
      await slow.running.close(1_000);
    }
  });
});

describe("what the envelope layer holds on to", () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it("reads a body sent a byte at a time on the connect edge without copying it over and over", async () => {
    const message = request(`org_${"x".repeat(8_000)}`);
    const body = envelope(message);
    let allocated = 0;
    for (const name of ["concat", "alloc", "allocUnsafe", "allocUnsafeSlow"] as const) {
      const original = Buffer[name] as (...args: never[]) => Buffer;
      vi.spyOn(Buffer, name).mockImplementation(((...args: never[]) => {
        const made = original.apply(Buffer, args);
        allocated += made.length;
        return made;
      }) as never);
    }
    const method = OrganizationService.method.getOrganization;
    const checked = new CheckedBody(
      Readable.from(bytewise(body)),
      {
        method,
        enveloped: true,
        binary: true,
        gzipped: false,
        maxMessageBytes: MAX_REQUEST_BYTES,
        readBy: Number.POSITIVE_INFINITY,
        readByIsDeadline: false,
        readTimeoutMs: DEFAULT_TRANSPORT_LIMITS.bodyReadTimeoutMs,
      },
      new ReadDeadlines(),
      () => {},
    );
    const read: Uint8Array[] = [];
    for await (const each of checked) read.push(each);
    vi.restoreAllMocks();
    expect(Buffer.concat(read)).toEqual(body);
    // Joining the bytes once is a few times the body; joining them at every byte is its square.
    expect(allocated).toBeLessThan(body.length * 8);
  });

  // Suspected of holding a reset stream's chunks and read deadline until the deadline: it does not,
  // since node ends the stream's readable side on RST_STREAM and the call then reads what it has.
  it("lets go of a fast-path call whose stream is reset while its body arrives", async () => {
    const waiting = new Set<PendingRead>();
    class WatchedDeadlines extends ReadDeadlines {
      override add(read: PendingRead): void {
        waiting.add(read);
        super.add(read);
      }
      override delete(read: PendingRead): void {
        waiting.delete(read);
        super.delete(read);
      }
    }
    const fastPath = new GrpcFastPath(
      createTestPipeline(new Stubs()),
      MAX_REQUEST_BYTES,
      DEFAULT_TRANSPORT_LIMITS,
      new WatchedDeadlines(),
      pino({ level: "silent" }),
    );
    let received!: () => void;
    const bytesIn = new Promise<void>((resolve) => {
      received = resolve;
    });
    let closed!: () => void;
    const streamClosed = new Promise<void>((resolve) => {
      closed = resolve;
    });
    const server = http2.createServer();
    server.on("stream", (stream, headers) => {
      const method = fastPath.methodFor(headers);
      if (method === undefined) throw new Error("the fast path did not take the call");
      fastPath.serve(stream, headers, method);
      stream.once("data", () => setImmediate(received));
      stream.once("close", () => setImmediate(closed));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const session = http2.connect(`http://127.0.0.1:${(server.address() as net.AddressInfo).port}`);
    try {
      const stream = session.request({
        ":method": "POST",
        ":path": GET_ORGANIZATION,
        "content-type": "application/grpc",
        ...bearer("dev-provisioning"),
      });
      stream.on("error", () => {});
      stream.write(Buffer.concat([declared(1_000), Buffer.alloc(500)]));
      await bytesIn;
      expect(waiting.size).toBe(1);
      stream.close(http2.constants.NGHTTP2_CANCEL);
      await streamClosed;
      // The read deadline is the default, far away: only the reset can have let the call go.
      expect(waiting.size).toBe(0);
    } finally {
      session.close();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
