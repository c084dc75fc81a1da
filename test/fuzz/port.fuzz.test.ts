// Fuzzes the port of the real service (SQLite in memory): every RPC, every protocol and content
// type, both HTTP versions, with mutated protobuf, JSON, framing and headers (see generate.ts).
// Pass: every request gets an answer (no hang), no answer is INTERNAL, every error carries an
// ErrorInfo of the connections.v1 domain and no decoder's or setting's words, and the service
// still answers afterwards. The run is made twice: with admission control off and on (the default),
// where a new HTTP/2 connection may open FIRST_STREAMS (16) streams until its first is seen
// (stream-shares.ts), so that requests beyond those are reset REFUSED_STREAM by nghttp2 before the
// service sees them: an answer too, since nothing was done.
//
// FUZZ_SEED (default below) and FUZZ_CASES (default 2000; `npm run fuzz` runs many more) choose the
// run; a failure names its seed and case index, and `FUZZ_SEED=<seed> FUZZ_ONLY=<index>` replays it.

import http from "node:http";
import http2 from "node:http2";
import type { DescMethod } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConnectionService } from "../../gen/connections/v1/connection_service_pb.js";
import { OrganizationService } from "../../gen/connections/v1/organization_service_pb.js";
import { Health } from "../../gen/grpc/health/v1/health_pb.js";
import { testDatabases } from "../support/databases.js";
import { mapConcurrently } from "../support/fixtures.js";
import { startTestService, type TestService } from "../support/service.js";
import { h2Request, http1Request, type WireAnswer } from "../support/wire.js";
import { type FuzzCase, fuzzCase } from "./generate.js";

const SEED = Number(process.env.FUZZ_SEED ?? 20_261_128);
const CASES = Number(process.env.FUZZ_CASES ?? 2_000);
const ONLY = process.env.FUZZ_ONLY === undefined ? undefined : Number(process.env.FUZZ_ONLY);
const CONCURRENCY = 8;
const LEAKED_INTERNALS =
  /parse binary|premature|wire type|illegal tag|readMaxBytes|JSON at position|Unexpected token|cannot decode|invalid uint|URI malformed/i;

const METHODS: readonly DescMethod[] = [
  ...ConnectionService.methods,
  ...OrganizationService.methods,
  Health.method.check,
];

/** An :authority that is not a valid header value: node's HTTP/2 layer resets such a stream itself. */
const MALFORMED_AUTHORITY = /^(|.*\s.*)$/;

const SETTINGS = [
  { admission: "off", env: { ADMISSION_MAX_IN_FLIGHT: "0" }, refusedUnseen: false },
  { admission: "on", env: {}, refusedUnseen: true },
] as const;

/** Why an answer fails the fuzz criteria, or undefined when it passes. */
function verdict(fuzz: FuzzCase, answer: WireAnswer, refusedUnseen: boolean): string | undefined {
  if (answer.code === undefined) {
    if (refusedUnseen && answer.httpStatus === 0 && answer.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM) {
      return undefined;
    }
    // RFC 9113 8.1.1: a malformed request is a stream error of type PROTOCOL_ERROR.
    const authority = fuzz.headers[":authority"];
    const malformed = authority !== undefined && MALFORMED_AUTHORITY.test(authority);
    if (malformed && answer.httpStatus === 0 && answer.rstCode === http2.constants.NGHTTP2_PROTOCOL_ERROR) {
      return undefined;
    }
    return `no status (HTTP ${answer.httpStatus}, RST ${answer.rstCode})`;
  }
  if (answer.code === 13) return `INTERNAL: ${answer.message}`;
  if (answer.code === 0) return undefined;
  if (answer.errorInfo?.domain !== "connections.v1") return `code ${answer.code} without ErrorInfo: ${answer.message}`;
  if (LEAKED_INTERNALS.test(answer.message)) return `internal words in the message: ${answer.message}`;
  return undefined;
}

const STREAMING_PATHS: ReadonlySet<string> = new Set(
  METHODS.filter((method) => method.methodKind === "server_streaming").map(
    (method) => `/${method.parent.typeName}/${method.name}`,
  ),
);

/**
 * A well-formed WatchConnectionEvents request is answered with a stream that lives as long as its
 * client wants, so it carries a short deadline here (replacing a fuzzed one): it then ends with
 * DEADLINE_EXCEEDED like any answer. Timeout headers stay fuzzed on every unary RPC.
 */
function withStreamDeadline(fuzz: FuzzCase): Record<string, string> {
  if (!STREAMING_PATHS.has(fuzz.path)) return fuzz.headers;
  const { "grpc-timeout": _grpc, "connect-timeout-ms": _connect, ...headers } = fuzz.headers;
  const grpcFamily = fuzz.variant.contentType.startsWith("application/grpc");
  return { ...headers, ...(grpcFamily ? { "grpc-timeout": "2S" } : { "connect-timeout-ms": "2000" }) };
}

function describeCase(fuzz: FuzzCase): string {
  const { variant } = fuzz;
  return `seed ${SEED} case ${fuzz.index}: ${variant.contentType} over ${variant.http} ${fuzz.path} [${fuzz.mutations.join("; ")}]`;
}

/** node's clients refuse to send some headers (invalid characters); those cases test nothing here. */
function refusedByClient(error: unknown): boolean {
  const code = (error as { code?: string }).code ?? "";
  return code === "ERR_INVALID_CHAR" || code.startsWith("ERR_HTTP2_INVALID") || code === "ERR_INVALID_HTTP_TOKEN";
}

describe.each(SETTINGS)("fuzzing the port, admission control $admission", ({ env, refusedUnseen }) => {
  let service: TestService;
  let session: http2.ClientHttp2Session | undefined;
  const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });

  const h2 = () => {
    if (session === undefined || session.closed || session.destroyed) {
      session = http2.connect(service.baseUrl);
      session.on("error", () => {});
    }
    return session;
  };

  beforeAll(async () => {
    service = await startTestService(testDatabases[0] as (typeof testDatabases)[number], env);
    const provisioning = service.client("connect-grpc").as({ caller: "provisioning" });
    await provisioning.createOrganization({ id: "org_fuzz_a", name: "Fuzz A" });
    await provisioning.createOrganization({ id: "org_fuzz_b", name: "Fuzz B" });
    await service
      .client("connect-grpc")
      .as({ caller: "dashboard-bff", organizationId: "org_fuzz_a" })
      .createConnection({ destinationOrganizationId: "org_fuzz_b", scopes: ["inquiry.read"], name: "fuzz" });
  });

  afterAll(async () => {
    agent.destroy();
    session?.destroy();
    await service?.close();
  });

  it(`answers ${ONLY === undefined ? CASES : 1} fuzzed requests without crash, hang, INTERNAL or a bare error`, {
    timeout: Math.max(120_000, CASES * 60),
  }, async () => {
    const indexes = ONLY === undefined ? Array.from({ length: CASES }, (_, index) => index) : [ONLY];
    const failures: string[] = [];
    let skipped = 0;
    await mapConcurrently(indexes, CONCURRENCY, async (index) => {
      const fuzz = fuzzCase(SEED, index, METHODS);
      const request = { path: fuzz.path, headers: withStreamDeadline(fuzz), body: fuzz.body };
      let answer: WireAnswer;
      try {
        answer =
          fuzz.variant.http === "h2"
            ? await h2Request(h2(), request, 15_000)
            : await http1Request(service.port, request, agent, 15_000);
      } catch (error) {
        if (refusedByClient(error)) {
          skipped++;
          return;
        }
        failures.push(`${describeCase(fuzz)}: ${(error as Error).message}`);
        return;
      }
      const problem = verdict(fuzz, answer, refusedUnseen);
      if (problem !== undefined) failures.push(`${describeCase(fuzz)}: ${problem}`);
    });
    expect(failures.slice(0, 20), `${failures.length} failures; ${skipped} skipped`).toEqual([]);
    expect(skipped).toBeLessThan(indexes.length / 10 + 1);
    // Still serving.
    const organization = await service
      .client("grpc-js")
      .as({ caller: "provisioning" })
      .getOrganization({ id: "org_fuzz_a" });
    expect(organization.organization?.id).toBe("org_fuzz_a");
  });
});
