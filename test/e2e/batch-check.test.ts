// BatchCheckConnection: 1 to 100 checks answered in order, each exactly as CheckConnection answers
// it; an invalid item fails the whole call naming it ("checks[3].scope"). It is unary, so the gRPC
// fast path serves it like CheckConnection.

import http2 from "node:http2";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { expect, it } from "vitest";
import {
  CheckConnectionRequest_Action as Action,
  BatchCheckConnectionRequestSchema,
  BatchCheckConnectionResponseSchema,
  type CheckConnectionRequest,
} from "../../gen/connections/v1/connection_service_pb.js";
import { connectionFixture } from "../support/fixtures.js";
import {
  Code,
  describeE2E,
  expectInvalidArgument,
  expectRpcError,
  registerOrganizations,
  uniqueId,
} from "../support/service.js";

type Check = Pick<CheckConnectionRequest, "connectionId" | "organizationId" | "action" | "scope">;

const BATCH_PATH = "/connections.v1.ConnectionService/BatchCheckConnection";

/** Which of mixedChecks() are allowed. */
const MIXED_ALLOWED = [true, true, false, false, false, false, false, false, true];

describeE2E("BatchCheckConnection", (e2e) => {
  const tokenService = () => e2e.as("token-service");

  /** Checks of every outcome: allowed, not found, wrong organization, not active, scope not granted. */
  async function mixedChecks(): Promise<Check[]> {
    const active = await connectionFixture(e2e.client(), { state: "ACTIVE", scopes: ["account.read"] });
    const pending = await connectionFixture(e2e.client(), { scopes: ["inquiry.read"] });
    const [stranger = ""] = await registerOrganizations(e2e.client(), 1);
    const on = (fixture: typeof active, organizationId: string, action: Action, scope: string): Check => ({
      connectionId: fixture.connection.id,
      organizationId,
      action,
      scope,
    });
    return [
      on(active, active.source, Action.ISSUE_SHARE_TOKEN, "account.read"),
      on(active, active.destination, Action.REDEEM_SHARE_TOKEN, "account.read"),
      on(active, active.destination, Action.REDEEM_SHARE_TOKEN, "transaction.read"),
      on(active, active.destination, Action.ISSUE_SHARE_TOKEN, "account.read"),
      on(active, stranger, Action.ISSUE_SHARE_TOKEN, "account.read"),
      { ...on(active, active.source, Action.ISSUE_SHARE_TOKEN, "account.read"), connectionId: `cxn_${uniqueId("x")}` },
      on(pending, pending.source, Action.ISSUE_SHARE_TOKEN, "inquiry.read"),
      on(pending, pending.destination, Action.REDEEM_SHARE_TOKEN, "verification.read"),
      // The same check again: answered again.
      on(active, active.source, Action.ISSUE_SHARE_TOKEN, "account.read"),
    ];
  }

  it("answers each check, in order, exactly as CheckConnection does", async () => {
    const checks = await mixedChecks();
    const { results } = await tokenService().batchCheckConnection({ checks });
    const singles = await Promise.all(checks.map((check) => tokenService().checkConnection(check)));
    expect(results).toEqual(singles);
    expect(results.map((result) => result.allowed)).toEqual(MIXED_ALLOWED);
  });

  it("takes 1 and 100 checks, and refuses none or 101 with INVALID_ARGUMENT", async () => {
    const [check] = await mixedChecks();
    const many = (count: number) => Array.from({ length: count }, () => check as Check);
    expect((await tokenService().batchCheckConnection({ checks: many(1) })).results).toHaveLength(1);
    const hundred = await tokenService().batchCheckConnection({ checks: many(100) });
    expect(hundred.results).toHaveLength(100);
    expect(hundred.results.every((result) => result.allowed)).toBe(true);
    await expectInvalidArgument(tokenService().batchCheckConnection({ checks: [] }), "checks");
    await expectInvalidArgument(tokenService().batchCheckConnection({ checks: many(101) }), "checks");
  });

  it("refuses the whole batch when one check is invalid, naming it", async () => {
    const checks = await mixedChecks();
    const spoiled = (index: number, change: Partial<Check>) =>
      tokenService().batchCheckConnection({
        checks: checks.map((check, at) => (at === index ? { ...check, ...change } : check)),
      });
    await expectInvalidArgument(spoiled(3, { scope: "" }), "checks[3].scope");
    await expectRpcError(spoiled(3, { scope: "account.write" }), Code.InvalidArgument, "UNKNOWN_SCOPE", {
      field: "checks[3].scope",
      scope: "account.write",
    });
    await expectInvalidArgument(spoiled(0, { connectionId: "nope" }), "checks[0].connection_id");
    await expectInvalidArgument(spoiled(8, { organizationId: "" }), "checks[8].organization_id");
    await expectInvalidArgument(spoiled(5, { action: Action.UNSPECIFIED }), "checks[5].action");
  });

  it("needs no x-organization-id and is for the token service only", async () => {
    const checks = await mixedChecks();
    for (const caller of ["dashboard-bff", "api-gateway", "provisioning"] as const) {
      await expectRpcError(
        e2e.as(caller, checks[0]?.organizationId).batchCheckConnection({ checks }),
        Code.PermissionDenied,
        "CALLER_NOT_ALLOWED",
      );
    }
  });

  it.runIf(e2e.kind === "grpc-js")(
    "is served by the gRPC fast path (trailers-only errors, as it answers)",
    async () => {
      const checks = await mixedChecks();
      const session = http2.connect(e2e.service().baseUrl);
      const call = (body: Uint8Array) =>
        new Promise<{ headers: http2.IncomingHttpHeaders; trailers?: http2.IncomingHttpHeaders; body: Buffer }>(
          (resolve, reject) => {
            const prefix = Buffer.alloc(5);
            prefix.writeUInt32BE(body.length, 1);
            const stream = session.request({
              ":method": "POST",
              ":path": BATCH_PATH,
              "content-type": "application/grpc",
              te: "trailers",
              authorization: "Bearer dev-token-service",
            });
            let headers: http2.IncomingHttpHeaders = {};
            let trailers: http2.IncomingHttpHeaders | undefined;
            const chunks: Buffer[] = [];
            stream.on("response", (received) => {
              headers = received;
            });
            stream.on("trailers", (received) => {
              trailers = received;
            });
            stream.on("data", (chunk: Buffer) => chunks.push(chunk));
            stream.on("end", () => resolve({ headers, trailers, body: Buffer.concat(chunks) }));
            stream.on("error", reject);
            stream.end(Buffer.concat([prefix, body]));
          },
        );
      try {
        const ok = await call(
          toBinary(BatchCheckConnectionRequestSchema, create(BatchCheckConnectionRequestSchema, { checks })),
        );
        expect(ok.trailers?.["grpc-status"]).toBe("0");
        const answer = fromBinary(BatchCheckConnectionResponseSchema, ok.body.subarray(5));
        expect(answer.results.map((result) => result.allowed)).toEqual(MIXED_ALLOWED);
        // The fast path answers an error before any message in one HEADERS frame; connect-node
        // always sends headers and then trailers.
        const refused = await call(
          toBinary(BatchCheckConnectionRequestSchema, create(BatchCheckConnectionRequestSchema)),
        );
        expect(refused.trailers).toBeUndefined();
        expect(refused.headers["grpc-status"]).toBe(String(Code.InvalidArgument));
      } finally {
        session.close();
      }
    },
  );
});
