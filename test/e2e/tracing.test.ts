// Traces exported over OTLP/HTTP protobuf to an in-process receiver: every RPC a server span named
// after its method that continues the caller's traceparent, over the gRPC fast path (grpc-js) and
// connect-node (Connect JSON over HTTP/1.1) alike, with the request id and caller as attributes,
// never a token, and the store's work as child spans.

import { randomBytes } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CheckConnectionRequest_Action } from "../../gen/connections/v1/connection_service_pb.js";
import { loadConfig } from "../../src/config/config.js";
import { testDatabases } from "../support/databases.js";
import { type ClientKind, startTestService, type TestService, uniqueId } from "../support/service.js";

interface ExportedSpan {
  readonly traceId: string;
  readonly spanId: string;
  readonly parentSpanId: string;
  readonly name: string;
  readonly kind: number;
  readonly attributes: Record<string, string | number | boolean>;
}

/** Decodes the fields of one protobuf message: field number -> raw values. */
function fields(bytes: Uint8Array): Map<number, (Uint8Array | bigint | number)[]> {
  const reader = new BinaryReader(bytes);
  const found = new Map<number, (Uint8Array | bigint | number)[]>();
  while (reader.pos < reader.len) {
    const [number, wireType] = reader.tag();
    let value: Uint8Array | bigint | number;
    if (wireType === WireType.LengthDelimited) value = reader.bytes();
    else if (wireType === WireType.Varint) value = BigInt(reader.uint64());
    else if (wireType === WireType.Bit64) value = BigInt(reader.fixed64());
    else if (wireType === WireType.Bit32) value = reader.fixed32();
    else {
      reader.skip(wireType, number);
      continue;
    }
    found.set(number, [...(found.get(number) ?? []), value]);
  }
  return found;
}

const messages = (map: Map<number, unknown[]>, number: number) => (map.get(number) ?? []) as Uint8Array[];
const hex = (value: Uint8Array | undefined) => Buffer.from(value ?? new Uint8Array()).toString("hex");
const text = (value: Uint8Array | undefined) => new TextDecoder().decode(value ?? new Uint8Array());

/** opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest -> spans. */
function decodeExport(body: Uint8Array): ExportedSpan[] {
  const spans: ExportedSpan[] = [];
  for (const resourceSpans of messages(fields(body), 1)) {
    for (const scopeSpans of messages(fields(resourceSpans), 2)) {
      for (const spanBytes of messages(fields(scopeSpans), 2)) {
        const span = fields(spanBytes);
        const attributes: Record<string, string | number | boolean> = {};
        for (const keyValue of messages(span, 9)) {
          const entry = fields(keyValue);
          const value = fields(messages(entry, 2)[0] ?? new Uint8Array());
          const stringValue = messages(value, 1)[0];
          const intValue = value.get(3)?.[0];
          const boolValue = value.get(2)?.[0];
          attributes[text(messages(entry, 1)[0])] =
            stringValue !== undefined
              ? text(stringValue)
              : intValue !== undefined
                ? Number(intValue)
                : boolValue === 1n;
        }
        spans.push({
          traceId: hex(messages(span, 1)[0]),
          spanId: hex(messages(span, 2)[0]),
          parentSpanId: hex(messages(span, 4)[0]),
          name: text(messages(span, 5)[0]),
          kind: Number(span.get(6)?.[0] ?? 0),
          attributes,
        });
      }
    }
  }
  return spans;
}

describe("OpenTelemetry traces over OTLP/HTTP", () => {
  const SQLITE = testDatabases.find((database) => database.kind === "sqlite-memory");
  if (SQLITE === undefined) throw new Error("no in-memory SQLite test database");
  let receiver: Server;
  const spans: ExportedSpan[] = [];
  const contentTypes = new Set<string>();
  let service: TestService;
  const waiters: (() => void)[] = [];

  beforeAll(async () => {
    receiver = createServer((request, response) => {
      const chunks: Buffer[] = [];
      request.on("data", (chunk: Buffer) => chunks.push(chunk));
      request.on("end", () => {
        if (request.url === "/v1/traces") {
          contentTypes.add(String(request.headers["content-type"]));
          spans.push(...decodeExport(Buffer.concat(chunks)));
          for (const wake of waiters.splice(0)) wake();
        }
        // An empty ExportTraceServiceResponse: full success.
        response.writeHead(200, { "content-type": "application/x-protobuf" }).end();
      });
    });
    await new Promise<void>((resolve) => receiver.listen(0, "127.0.0.1", resolve));
    service = await startTestService(SQLITE, {
      OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${(receiver.address() as AddressInfo).port}`,
      OTEL_BSP_SCHEDULE_DELAY: "50",
      OTEL_SERVICE_NAME: "connections-under-test",
    });
  }, 60_000);

  afterAll(async () => {
    await service?.close();
    await new Promise((resolve) => receiver?.close(resolve));
  });

  /** The spans of one trace, once its server span (and children) have arrived. */
  async function traceOf(traceId: string, count: number): Promise<ExportedSpan[]> {
    for (let attempt = 0; attempt < 200; attempt++) {
      const found = spans.filter((span) => span.traceId === traceId);
      if (found.length >= count) return found;
      await new Promise<void>((resolve) => {
        waiters.push(resolve);
        setTimeout(resolve, 100);
      });
    }
    throw new Error(`trace ${traceId}: expected ${count} spans, got ${JSON.stringify(spans)}`);
  }

  it.each([
    { kind: "grpc-js" as ClientKind, protocol: "grpc" },
    { kind: "connect-http1" as ClientKind, protocol: "connect" },
  ])(
    "continues the caller's trace with a server span and database child spans via $kind",
    async ({ kind, protocol }) => {
      const traceId = randomBytes(16).toString("hex");
      const parentSpanId = randomBytes(8).toString("hex");
      const requestId = uniqueId("req_trace");
      await service
        .client(kind)
        .as({
          caller: "token-service",
          requestId,
          headers: { traceparent: `00-${traceId}-${parentSpanId}-01` },
        })
        .checkConnection({
          connectionId: "cxn_absent",
          organizationId: "org_absent",
          action: CheckConnectionRequest_Action.ISSUE_SHARE_TOKEN,
          scope: "account.read",
        });
      const trace = await traceOf(traceId, 2);
      const server = trace.find((span) => span.name === "connections.v1.ConnectionService/CheckConnection");
      expect(server).toMatchObject({
        parentSpanId,
        kind: 2, // SERVER
        attributes: {
          "rpc.system": "grpc",
          "rpc.service": "connections.v1.ConnectionService",
          "rpc.method": "CheckConnection",
          "rpc.grpc.status_code": 0,
          "connections.protocol": protocol,
          "connections.request_id": requestId,
          "connections.caller": "token-service",
        },
      });
      const database = trace.filter((span) => span.parentSpanId === server?.spanId);
      expect(database.map((span) => span.name)).toContain("Store.getConnectionForCheck");
      expect(database[0]?.attributes["db.system"]).toBe("sqlite");
      expect(JSON.stringify(trace)).not.toMatch(/dev-token-service|Bearer/);
      expect([...contentTypes]).toEqual(["application/x-protobuf"]);
    },
  );

  it("traces refusals too, with the reason and no caller for an unknown token", async () => {
    const traceId = randomBytes(16).toString("hex");
    await service
      .client("grpc-js")
      .as({
        authorization: "Bearer not-a-known-token",
        headers: { traceparent: `00-${traceId}-${randomBytes(8).toString("hex")}-01` },
      })
      .getOrganization({ id: "org_x" })
      .catch(() => undefined);
    const [server] = await traceOf(traceId, 1);
    expect(server?.name).toBe("connections.v1.OrganizationService/GetOrganization");
    expect(server?.attributes).toMatchObject({
      "rpc.grpc.status_code": 16,
      "connections.error_reason": "CALLER_UNAUTHENTICATED",
    });
    expect(server?.attributes["connections.caller"]).toBeUndefined();
    expect(JSON.stringify(server)).not.toContain("not-a-known-token");
  });

  it("traces a WatchConnectionEvents stream as one server span that ends with the stream", async () => {
    const traceId = randomBytes(16).toString("hex");
    const parentSpanId = randomBytes(8).toString("hex");
    await service
      .client("grpc-js")
      .as({ caller: "token-service", headers: { traceparent: `00-${traceId}-${parentSpanId}-01` } })
      .watchConnectionEvents({ startAfter: "not-a-cursor" })
      .catch(() => undefined);
    const [server] = await traceOf(traceId, 1);
    expect(server).toMatchObject({
      name: "connections.v1.ConnectionService/WatchConnectionEvents",
      parentSpanId,
      kind: 2, // SERVER
      attributes: {
        "rpc.grpc.status_code": 3,
        "connections.error_reason": "INVALID_ARGUMENT",
        "connections.caller": "token-service",
      },
    });
  });

  it("is off without an OTLP endpoint, and refuses an endpoint that is not a URL", () => {
    expect(loadConfig({}).tracing).toBeUndefined();
    expect(
      loadConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", OTEL_SDK_DISABLED: "true" }).tracing,
    ).toBeUndefined();
    expect(() => loadConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: "collector" })).toThrow(/OTEL_EXPORTER_OTLP_ENDPOINT/);
  });
});
