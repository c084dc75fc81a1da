// The port against hostile and heavy clients, one test per way it used to fail: a request that
// crashed the process (Host/:authority), connections that were never dropped (idle, slowloris),
// declared-large messages that trickle in, refusals that poisoned the connection, statuses that
// differed from the gRPC spec, the health Watch that grew without bound. Short limits are
// configured so that each test finishes quickly; nothing here measures time.

import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GetOrganizationRequestSchema } from "../../gen/connections/v1/organization_service_pb.js";
import { HealthCheckRequestSchema } from "../../gen/grpc/health/v1/health_pb.js";
import {
  closedWithin,
  envelope,
  h2Open,
  h2Request,
  http1Request,
  tcpExchange,
  type WireAnswer,
} from "../support/wire.js";
import { bearer, MAX_REQUEST_BYTES, startTestServer, type TestServer } from "./harness.js";

const GET_ORGANIZATION = "/connections.v1.OrganizationService/GetOrganization";
const GET_CONNECTION = "/connections.v1.ConnectionService/GetConnection";
const HEALTH_CHECK = "/grpc.health.v1.Health/Check";
const HEALTH_WATCH = "/grpc.health.v1.Health/Watch";
const MAX_HEALTH_WATCHERS = 5;

const getOrganization = (id: string) =>
  Buffer.from(toBinary(GetOrganizationRequestSchema, create(GetOrganizationRequestSchema, { id })));
const healthCheck = Buffer.from(toBinary(HealthCheckRequestSchema, create(HealthCheckRequestSchema, {})));

/** Every protocol and content type for a GetOrganization of `id`, as [content-type, body]. */
function everyProtocol(id: string): [string, Buffer][] {
  const binary = getOrganization(id);
  const json = Buffer.from(JSON.stringify({ id }));
  return [
    ["application/grpc", envelope(binary)],
    ["application/grpc+json", envelope(json)],
    ["application/grpc-web+proto", envelope(binary)],
    ["application/grpc-web+json", envelope(json)],
    ["application/proto", binary],
    ["application/json", json],
  ];
}

function expectRefusal(answer: WireAnswer, code: Code, reason: string, what: string) {
  expect({ code: answer.code, reason: answer.errorInfo?.reason, domain: answer.errorInfo?.domain }, what).toEqual({
    code,
    reason,
    domain: "connections.v1",
  });
}

describe("the port", () => {
  let server: TestServer;
  let current: http2.ClientHttp2Session | undefined;
  /** A session to the server; a new one when the idle timeout has closed the last. */
  const h2 = () => {
    if (current === undefined || current.closed || current.destroyed) current = http2.connect(server.baseUrl);
    return current;
  };

  beforeAll(async () => {
    server = await startTestServer({
      firstBytesTimeoutMs: 2_000,
      http1HeadersTimeoutMs: 1_000,
      http1RequestTimeoutMs: 2_000,
      http1KeepAliveTimeoutMs: 500,
      http2IdleTimeoutMs: 1_500,
      http2KeepaliveIntervalMs: 200,
      http2KeepaliveTimeoutMs: 1_500,
      bodyReadTimeoutMs: 700,
      maxHealthWatchers: MAX_HEALTH_WATCHERS,
    });
  });

  afterAll(async () => {
    current?.destroy();
    await server.running.close(500);
  });

  async function canary(): Promise<void> {
    const fresh = http2.connect(server.baseUrl);
    try {
      const answer = await h2Request(fresh, {
        path: GET_ORGANIZATION,
        headers: { "content-type": "application/grpc", ...bearer("dev-provisioning") },
        body: envelope(getOrganization("org_a")),
      });
      expect(answer.code).toBe(0);
    } finally {
      fresh.close();
    }
  }

  it("answers a missing or malformed Host or :authority, and keeps running", async () => {
    const paths = [GET_ORGANIZATION, HEALTH_CHECK, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"];
    const hosts = [undefined, "", "a b", "[::1", "127.0.0.1:99999"];
    for (const path of paths) {
      for (const host of hosts) {
        const head = [
          `POST ${path} HTTP/${host === undefined ? "1.0" : "1.1"}`,
          ...(host === undefined ? [] : [`Host: ${host}`]),
          "Content-Type: application/json",
          "Content-Length: 2",
          "Connection: close",
        ];
        const { text } = await tcpExchange(server.running.port, `${head.join("\r\n")}\r\n\r\n{}`);
        expect(text, `${path} with Host ${JSON.stringify(host)}`).toMatch(/^HTTP\/1\.[01] [1-5]\d\d/);
      }
    }
    // :authority that is not a valid authority, over HTTP/2.
    const answer = await h2Request(h2(), {
      path: HEALTH_CHECK,
      headers: { ":authority": "[zz", "content-type": "application/grpc" },
      body: envelope(healthCheck),
    });
    expect(answer.code).toBe(0);
    await canary();
  });

  it("drops a connection that sends nothing, and an HTTP/2 one that sends only the preface", async () => {
    const before = server.portRefusals.length;
    const silent = net.connect(server.running.port, "127.0.0.1");
    await closedWithin(silent, 10_000);
    // The preface and an empty SETTINGS frame, then nothing: never a stream, never a PING answer.
    const prefaceOnly = net.connect(server.running.port, "127.0.0.1");
    prefaceOnly.on("error", () => {});
    prefaceOnly.write(
      Buffer.concat([
        Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1"),
        Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]),
      ]),
    );
    await closedWithin(prefaceOnly, 10_000);
    // The keepalive (interval + timeout) drops it before the idle timeout's GOAWAY could close it.
    expect(server.portRefusals.slice(before)).toEqual(["first_bytes_timeout", "keepalive_timeout"]);
    await canary();
  });

  it("sends GOAWAY to a well-behaved HTTP/2 client that opens no stream for the idle timeout", async () => {
    const idle = http2.connect(server.baseUrl);
    const goaway = new Promise<void>((resolve) => idle.once("goaway", () => resolve()));
    await h2Request(idle, {
      path: HEALTH_CHECK,
      headers: { "content-type": "application/grpc" },
      body: envelope(healthCheck),
    });
    await goaway;
    idle.destroy();
  });

  it("closes an HTTP/1.1 connection that trickles its headers (slowloris)", async () => {
    const before = server.portRefusals.length;
    const slow = net.connect(server.running.port, "127.0.0.1");
    slow.on("error", () => {});
    slow.write(`POST ${GET_ORGANIZATION} HTTP/1.1\r\nHost: x\r\n`);
    const trickle = setInterval(() => slow.write("X-Slow: 1\r\n"), 100);
    try {
      await closedWithin(slow, 10_000);
    } finally {
      clearInterval(trickle);
    }
    expect(server.portRefusals.slice(before)).toEqual(["http1_timeout"]);
    await canary();
  });

  it("refuses a declared-large message as soon as its length prefix arrives, on every enveloped protocol", async () => {
    // 200 MB declared, a few bytes sent, and the stream left open.
    const prefix = Buffer.alloc(5);
    prefix.writeUInt32BE(200 * 1024 * 1024, 1);
    for (const contentType of ["application/grpc", "application/grpc+json", "application/grpc-web+proto"]) {
      const { answer } = h2Open(h2(), {
        path: GET_ORGANIZATION,
        headers: { "content-type": contentType, ...bearer("dev-provisioning") },
        body: Buffer.concat([prefix, Buffer.alloc(16)]),
      });
      expectRefusal(await answer, Code.ResourceExhausted, "REQUEST_TOO_LARGE", contentType);
    }
  });

  it("counts the deadline and the body read time from the request's first byte", async () => {
    const before = server.portRefusals.length;
    const cases: [string, Record<string, string>, string][] = [
      ["application/grpc", { "grpc-timeout": "200m" }, "DEADLINE_EXCEEDED"],
      ["application/grpc", {}, "DEADLINE_EXCEEDED"],
      ["application/grpc-web+proto", { "grpc-timeout": "200m" }, "DEADLINE_EXCEEDED"],
      ["application/grpc-web+proto", {}, "DEADLINE_EXCEEDED"],
      ["application/proto", { "connect-timeout-ms": "200" }, "DEADLINE_EXCEEDED"],
      ["application/proto", {}, "DEADLINE_EXCEEDED"],
    ];
    for (const [contentType, timeout, reason] of cases) {
      const message =
        contentType === "application/proto" ? getOrganization("org_a") : envelope(getOrganization("org_a"));
      const { stream, answer } = h2Open(h2(), {
        path: GET_ORGANIZATION,
        headers: { "content-type": contentType, ...bearer("dev-provisioning"), ...timeout },
        body: message.subarray(0, 1),
      });
      // The rest of a valid message, one byte at a time, too slowly to finish in time.
      let sent = 1;
      const trickle = setInterval(() => {
        if (sent < message.length && !stream.closed) stream.write(message.subarray(sent, ++sent));
      }, 150);
      try {
        expectRefusal(await answer, Code.DeadlineExceeded, reason, `${contentType} ${JSON.stringify(timeout)}`);
      } finally {
        clearInterval(trickle);
      }
    }
    // The same status, told apart where it is counted: the caller's deadline, or the port's read timeout.
    expect(server.portRefusals.slice(before)).toEqual(
      cases.map(([, timeout]) => (Object.keys(timeout).length > 0 ? "deadline_passed" : "body_too_slow")),
    );
  });

  it("keeps an HTTP/2 connection healthy through many early refusals", async () => {
    const big = Buffer.alloc(MAX_REQUEST_BYTES * 2, 1);
    for (let round = 0; round < 30; round++) {
      const [contentType, body] = round % 2 === 0 ? ["application/proto", big] : ["application/grpc-web+proto", big];
      const answer = await h2Request(h2(), {
        path: GET_ORGANIZATION,
        headers: { "content-type": contentType, ...bearer("dev-provisioning") },
        body,
      });
      expectRefusal(answer, Code.ResourceExhausted, "REQUEST_TOO_LARGE", `${contentType} round ${round}`);
    }
    const after = await h2Request(h2(), {
      path: GET_ORGANIZATION,
      headers: { "content-type": "application/grpc", ...bearer("dev-provisioning") },
      body: envelope(getOrganization("org_a")),
    });
    expect(after.code).toBe(0);
  });

  it("answers the next HTTP/1.1 request after an oversized body", async () => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const json = { "content-type": "application/json", ...bearer("dev-provisioning") };
      for (let round = 0; round < 3; round++) {
        const tooLarge = await http1Request(
          server.running.port,
          {
            path: GET_ORGANIZATION,
            headers: json,
            body: Buffer.from(JSON.stringify({ id: "x".repeat(MAX_REQUEST_BYTES) })),
          },
          agent,
        );
        expectRefusal(tooLarge, Code.ResourceExhausted, "REQUEST_TOO_LARGE", "oversized JSON");
        const next = await http1Request(
          server.running.port,
          { path: GET_ORGANIZATION, headers: json, body: Buffer.from('{"id":"org_a"}') },
          agent,
        );
        expect(next.code).toBe(0);
      }
    } finally {
      agent.destroy();
    }
  });

  it("bounds what a caller's input puts into headers, and never breaks on a lone surrogate", async () => {
    const headers = { ...bearer("dev-dashboard-bff"), "x-organization-id": "org_a" };
    const longId = `cxn_unusual${"é".repeat(20_000)}`;
    for (const [contentType, body] of [
      ["application/grpc+json", envelope(Buffer.from('{"pageSize":"\\ud800"}'))],
      ["application/grpc-web+json", envelope(Buffer.from('{"pageSize":"\\ud800"}'))],
      ["application/json", Buffer.from('{"pageSize":"\\ud800"}')],
    ] as const) {
      const answer = await h2Request(h2(), {
        path: "/connections.v1.ConnectionService/ListConnections",
        headers: { "content-type": contentType, ...headers },
        body,
      });
      expectRefusal(answer, Code.InvalidArgument, "MALFORMED_REQUEST", contentType);
    }
    // A string field holding a lone surrogate is valid JSON: whatever echoes it must cope.
    const echoed = await h2Request(h2(), {
      path: GET_CONNECTION,
      headers: { "content-type": "application/grpc+json", ...headers },
      body: envelope(Buffer.from(JSON.stringify({ id: longId }).replace("é", "\\ud800"))),
    });
    expect(echoed.code).not.toBe(Code.Internal);
    const sizes = Object.values(echoed.headers).map((value) => value.length);
    expect(Math.max(...sizes)).toBeLessThan(4_096);
  });

  it("speaks the gRPC spec's statuses: unknown method, parameters in content-type, expired timeouts", async () => {
    const base = { ...bearer("dev-provisioning") };
    for (const contentType of ["application/grpc", "application/grpc-web+proto", "application/grpc+json"]) {
      const unknown = await h2Request(h2(), {
        path: "/connections.v1.OrganizationService/Nope",
        headers: { "content-type": contentType, ...base },
        body: envelope(getOrganization("org_a")),
      });
      expect(unknown.httpStatus).toBe(200);
      expectRefusal(unknown, Code.Unimplemented, "UNKNOWN_METHOD", contentType);
    }
    const connectUnknown = await h2Request(h2(), {
      path: "/nope/Nope",
      headers: { "content-type": "application/json", ...base },
      body: Buffer.from("{}"),
    });
    expectRefusal(connectUnknown, Code.Unimplemented, "UNKNOWN_METHOD", "connect");

    const charset = await h2Request(h2(), {
      path: GET_ORGANIZATION,
      headers: { "content-type": "application/grpc; charset=utf-8", ...base },
      body: envelope(getOrganization("org_a")),
    });
    expect(charset.code).toBe(0);

    for (const timeout of ["0m", "1n", "0S"]) {
      const expired = await h2Request(h2(), {
        path: GET_ORGANIZATION,
        headers: { "content-type": "application/grpc", "grpc-timeout": timeout, ...base },
        body: envelope(getOrganization("org_a")),
      });
      expectRefusal(expired, Code.DeadlineExceeded, "DEADLINE_EXCEEDED", `grpc-timeout ${timeout}`);
    }
  });

  it("logs and counts each refusal once, under a bounded label for unknown methods", async () => {
    const before = server.observed.length;
    await h2Request(h2(), {
      path: GET_ORGANIZATION,
      headers: { "content-type": "application/grpc-web+proto", ...bearer("dev-provisioning") },
      body: envelope(Buffer.from([0x0a, 0x64, 0x61])),
    });
    await h2Request(h2(), {
      path: `/x/${"y".repeat(300)}`,
      headers: { "content-type": "application/grpc" },
      body: envelope(Buffer.alloc(0)),
    });
    expect(server.observed.slice(before)).toEqual([
      { path: GET_ORGANIZATION, code: Code.InvalidArgument },
      { path: "unknown", code: Code.Unimplemented },
    ]);
  });

  it("counts what it turns away by reason: requests, and connections that do not speak HTTP", async () => {
    const before = server.portRefusals.length;
    const base = { "content-type": "application/grpc", ...bearer("dev-provisioning") };
    const requests: [Record<string, string>, Buffer, string][] = [
      [{ ":path": "/connections.v1.OrganizationService/Nope" }, envelope(getOrganization("org_a")), "unknown_method"],
      [{ "content-type": "text/plain" }, Buffer.from("hi"), "unsupported_media_type"],
      [{ "grpc-encoding": "br" }, envelope(getOrganization("org_a")), "unsupported_encoding"],
      [{}, envelope(Buffer.from([0x0a, 0x64, 0x61])), "malformed"],
      [{}, envelope(Buffer.alloc(MAX_REQUEST_BYTES + 1)), "too_large"],
      [{}, Buffer.concat([envelope(getOrganization("a")), envelope(getOrganization("b"))]), "not_one_message"],
    ];
    for (const [headers, body] of requests) {
      const { ":path": path = GET_ORGANIZATION, ...rest } = headers;
      await h2Request(h2(), { path, headers: { ...base, ...rest }, body });
    }
    // HTTP/2 HEADERS on an even stream id (the server's to use): a protocol error.
    const badFrames = net.connect(server.running.port, "127.0.0.1");
    badFrames.on("error", () => {});
    const headerBlock = Buffer.from([0x83, 0x84, 0x86, 0x41, 0x01, 0x61]);
    badFrames.write(
      Buffer.concat([
        Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1"),
        Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]),
        Buffer.from([0, 0, headerBlock.length, 1, 5, 0, 0, 0, 2]),
        headerBlock,
      ]),
    );
    await closedWithin(badFrames, 10_000);
    const garbage = await tcpExchange(server.running.port, "HELLO THERE\r\n\r\n");
    expect(garbage.text).toMatch(/^HTTP\/1\.1 400 /);
    const hugeHead = await tcpExchange(
      server.running.port,
      `POST ${GET_ORGANIZATION} HTTP/1.1\r\nHost: x\r\nX-Big: ${"b".repeat(20_000)}\r\n\r\n`,
    );
    expect(hugeHead.text).toMatch(/^HTTP\/1\.1 431 /);
    expect(server.portRefusals.slice(before)).toEqual([
      ...requests.map(([, , reason]) => reason),
      "http2_session_error",
      "http1_malformed",
      "http1_headers_too_large",
    ]);
  });

  it("caps health Watch streams and gives their place back when they end", async () => {
    const watchers: http2.ClientHttp2Stream[] = [];
    const openWatch = () => {
      const stream = h2().request({ ":method": "POST", ":path": HEALTH_WATCH, "content-type": "application/grpc" });
      stream.on("error", () => {});
      const first = new Promise<http2.IncomingHttpHeaders>((resolve) => stream.once("response", resolve));
      stream.end(envelope(healthCheck));
      return { stream, first };
    };
    for (let index = 0; index < MAX_HEALTH_WATCHERS; index++) {
      const { stream, first } = openWatch();
      expect((await first)["grpc-status"]).toBeUndefined();
      watchers.push(stream);
    }
    const refused = openWatch();
    const refusedHeaders = await refused.first;
    const trailers = await new Promise<http2.IncomingHttpHeaders>((resolve) => {
      if (refusedHeaders["grpc-status"] !== undefined) resolve(refusedHeaders);
      else refused.stream.once("trailers", resolve);
    });
    expect(trailers["grpc-status"]).toBe(String(Code.ResourceExhausted));
    for (const stream of watchers) stream.close(http2.constants.NGHTTP2_CANCEL);
    for (let attempt = 0; attempt < 200 && server.running.health.watcherCount > 0; attempt++) await sleep(25);
    expect(server.running.health.watcherCount).toBe(0);
    const again = openWatch();
    expect((await again.first)["grpc-status"]).toBeUndefined();
    again.stream.close(http2.constants.NGHTTP2_CANCEL);
  });

  it("serves every protocol over both HTTP versions, and refuses the same bad bytes the same way", async () => {
    const agent = new http.Agent({ keepAlive: true });
    try {
      for (const [contentType, body] of everyProtocol("org_a")) {
        const json = !contentType.includes("proto") && contentType !== "application/grpc";
        // Field 1 claiming 100 bytes that never come; for JSON, text that does not parse.
        const bad = json ? Buffer.from('{"id": ') : Buffer.from([0x0a, 0x64, 0x61]);
        const malformed = contentType.startsWith("application/grpc") ? envelope(bad) : bad;
        const request = (payload: Buffer) => ({
          path: GET_ORGANIZATION,
          headers: { "content-type": contentType, ...bearer("dev-provisioning") },
          body: payload,
        });
        const viaH2 = await h2Request(h2(), request(body));
        expect(viaH2.code, `${contentType} over h2`).toBe(0);
        const badH2 = await h2Request(h2(), request(malformed));
        expectRefusal(badH2, Code.InvalidArgument, "MALFORMED_REQUEST", `${contentType} over h2`);
        expect(badH2.message).not.toMatch(/premature|EOF|wire type|JSON at position|readMaxBytes|parse/i);
        if (contentType === "application/grpc" || contentType === "application/grpc+json") continue;
        const viaHttp1 = await http1Request(server.running.port, request(body), agent);
        expect(viaHttp1.code, `${contentType} over HTTP/1.1`).toBe(0);
        const badHttp1 = await http1Request(server.running.port, request(malformed), agent);
        expectRefusal(badHttp1, Code.InvalidArgument, "MALFORMED_REQUEST", `${contentType} over HTTP/1.1`);
      }
    } finally {
      agent.destroy();
    }
  });

  it("unsupported content types and encodings get an ErrorInfo too", async () => {
    const odd = await h2Request(h2(), {
      path: GET_ORGANIZATION,
      headers: { "content-type": "text/plain" },
      body: Buffer.from("hello"),
      family: "connect",
    });
    expect(odd.httpStatus).toBe(415);
    expect(odd.errorInfo?.reason).toBe("UNSUPPORTED_MEDIA_TYPE");
    for (const contentType of ["application/grpc", "application/grpc-web+proto"]) {
      const compressed = await h2Request(h2(), {
        path: GET_ORGANIZATION,
        headers: { "content-type": contentType, "grpc-encoding": "snappy", ...bearer("dev-provisioning") },
        body: envelope(getOrganization("org_a"), 1),
      });
      expectRefusal(compressed, Code.Unimplemented, "UNSUPPORTED_ENCODING", contentType);
    }
  });
});
