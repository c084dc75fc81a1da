// What src/transport/server.ts relies on in node beyond its documentation, so that an upgrade of
// node that changes it fails here, saying what to rework, rather than somewhere in the port:
// - it builds the connect edge's request and response for an HTTP/2 stream itself, with
//   `new http2.Http2ServerRequest(stream, headers, {}, rawHeaders)` and
//   `new http2.Http2ServerResponse(stream)` (node makes them so for its compatibility API, but
//   does not document the constructors);
// - it hands sockets to an http.Server that never listens, and emits 'listening' on it by hand,
//   because that is when node starts tracking its connections (request and header timeouts,
//   closeIdleConnections);
// - node's GOAWAY cannot let a stream on the wire through: nghttp2 ignores every new stream once it
//   has sent any GOAWAY, even one naming the highest stream id (goaway.ts says what follows).

import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import { afterEach, describe, expect, it } from "vitest";

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0)) cleanup();
});

function listen(server: net.Server): Promise<number> {
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () => resolve((server.address() as net.AddressInfo).port)),
  );
}

describe("node internals that the transport server relies on", () => {
  it("builds an Http2ServerRequest and Http2ServerResponse from a stream, as server.ts onStream does", async () => {
    const seen: { method?: string; url?: string; version?: string; header?: string; raw?: string[]; body?: string } =
      {};
    const server = http2.createServer();
    const onStream = (
      stream: http2.ServerHttp2Stream,
      headers: http2.IncomingHttpHeaders,
      _flags: number,
      rawHeaders: string[],
    ) => {
      let request: http2.Http2ServerRequest;
      let response: http2.Http2ServerResponse;
      try {
        request = new http2.Http2ServerRequest(stream, headers, {}, rawHeaders);
        response = new http2.Http2ServerResponse(stream);
      } catch (error) {
        stream.respond({ ":status": 500 });
        stream.end(`constructor failed: ${(error as Error).message}`);
        return;
      }
      const chunks: Buffer[] = [];
      request.on("data", (chunk: Buffer) => chunks.push(chunk));
      request.on("end", () => {
        Object.assign(seen, {
          method: request.method,
          url: request.url,
          version: request.httpVersion,
          header: request.headers["x-probe"],
          raw: request.rawHeaders,
          body: Buffer.concat(chunks).toString(),
        });
        response.writeHead(201, { "x-answer": "yes" });
        response.end("answered");
      });
    };
    server.on("stream", onStream);
    const port = await listen(server);
    cleanups.push(() => server.close());
    const session = http2.connect(`http://127.0.0.1:${port}`);
    cleanups.push(() => session.close());
    const answer = await new Promise<{ status: number; header: unknown; body: string }>((resolve, reject) => {
      const stream = session.request({ ":method": "POST", ":path": "/probe?x=1", "x-probe": "here" });
      let status = 0;
      let header: unknown;
      const chunks: Buffer[] = [];
      stream.on("response", (headers) => {
        status = Number(headers[":status"]);
        header = headers["x-answer"];
      });
      stream.on("data", (chunk: Buffer) => chunks.push(chunk));
      stream.on("close", () => resolve({ status, header, body: Buffer.concat(chunks).toString() }));
      stream.on("error", reject);
      stream.end("the body");
    });
    const broke =
      "node's undocumented Http2ServerRequest/Http2ServerResponse constructors changed: " +
      "src/transport/server.ts (onStream) must build the connect edge's request another way";
    expect(answer, broke).toEqual({ status: 201, header: "yes", body: "answered" });
    expect(seen, broke).toMatchObject({ method: "POST", url: "/probe?x=1", version: "2.0", header: "here" });
    expect(seen.raw, broke).toContain("x-probe");
    expect(seen.body, broke).toBe("the body");
  });

  it("tracks the connections of an http.Server that never listens once 'listening' is emitted on it", async () => {
    const tracked = http.createServer((_request, response) => response.end("ok"));
    tracked.emit("listening");
    cleanups.push(() => tracked.close());
    // The sockets reach it as server.ts hands them over: accepted elsewhere, given by 'connection'.
    const front = net.createServer((socket) => tracked.emit("connection", socket));
    const port = await listen(front);
    cleanups.push(() => front.close());
    const socket = net.connect(port, "127.0.0.1");
    cleanups.push(() => socket.destroy());
    const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
    const answered = new Promise<void>((resolve) => socket.once("data", () => resolve()));
    socket.write("GET / HTTP/1.1\r\nHost: probe\r\n\r\n");
    await answered;
    // The connection is now idle and kept alive: closeIdleConnections closes only what is tracked.
    tracked.closeIdleConnections();
    const outcome = await Promise.race([
      closed.then(() => "closed"),
      new Promise<string>((resolve) => setTimeout(() => resolve("still open"), 5_000).unref()),
    ]);
    expect(
      outcome,
      "node no longer starts tracking an http.Server's connections when 'listening' is emitted: " +
        "src/transport/server.ts must start its HTTP/1.1 timeouts and closeIdleConnections another way",
    ).toBe("closed");
  });

  it("ignores a stream that arrives after the server sent a GOAWAY naming the highest stream id", async () => {
    const server = http2.createServer();
    const streams: number[] = [];
    server.on("stream", (stream) => {
      streams.push(stream.id ?? 0);
      if (stream.id === 1) stream.session?.goaway(http2.constants.NGHTTP2_NO_ERROR, 2 ** 31 - 1);
      stream.respond({ ":status": 200 });
      stream.end();
    });
    cleanups.push(() => server.close());
    const port = await listen(server);
    // A raw client: a POST to / on stream 1; stream 3 only once it has read the GOAWAY.
    const frame = (type: number, flags: number, stream: number, payload: Buffer) => {
      const head = Buffer.alloc(9);
      head.writeUIntBE(payload.length, 0, 3);
      head.writeUInt8(type, 3);
      head.writeUInt8(flags, 4);
      head.writeUInt32BE(stream, 5);
      return Buffer.concat([head, payload]);
    };
    const request = (stream: number) => frame(1, 0x5, stream, Buffer.from([0x83, 0x84, 0x86, 0x41, 0x01, 0x61]));
    const client = net.connect(port, "127.0.0.1");
    cleanups.push(() => client.destroy());
    const goaway = new Promise<void>((resolve) => {
      let read = Buffer.alloc(0);
      client.on("data", (chunk: Buffer) => {
        read = Buffer.concat([read, chunk]);
        for (let at = 0; at + 9 <= read.length; at += 9 + read.readUIntBE(at, 3)) {
          if (read.readUInt8(at + 3) === 7) resolve();
        }
      });
    });
    client.write(
      Buffer.concat([
        Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1"),
        frame(4, 0, 0, Buffer.alloc(0)),
        request(1),
      ]),
    );
    await goaway;
    client.write(request(3));
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(
      streams,
      "node now serves a stream that arrives after its GOAWAY naming the highest stream id: the drain's " +
        "first step in src/transport/goaway.ts keeps streams on the wire, and its comment (and the health " +
        "notice in server.ts) can say so",
    ).toEqual([1]);
  });
});
