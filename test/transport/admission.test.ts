// Admission control through the real transport, on every client stack and protocol: a caller that
// holds the whole limit gets RESOURCE_EXHAUSTED OVERLOADED with grpc-retry-pushback-ms for more,
// while another caller's calls are answered; and a refused call never reaches its handler.

import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConnectionService } from "../../gen/connections/v1/connection_service_pb.js";
import { AdmissionController } from "../../src/api/rpc/admission.js";
import {
  bearer,
  CLIENT_KINDS,
  createTestClient,
  HOLD_ID,
  type Outcome,
  startTestServer,
  type TestClient,
  type TestServer,
} from "./harness.js";

const LIMIT = 4;
const PUSHBACK_MS = 321;
const actingFor = { "x-organization-id": "org_a" };
const tokenService = { ...bearer("dev-token-service"), ...actingFor };
const dashboard = { ...bearer("dev-dashboard-bff"), ...actingFor };

function expectOverloaded(outcome: Outcome<unknown>): void {
  expect(outcome.ok).toBe(false);
  if (outcome.ok) return;
  expect(outcome.code).toBe(Code.ResourceExhausted);
  expect(outcome.errorInfo?.reason).toBe("OVERLOADED");
  expect(outcome.headers["grpc-retry-pushback-ms"]).toBe(String(PUSHBACK_MS));
}

describe("admission control", () => {
  let server: TestServer;
  let controller: AdmissionController;

  beforeAll(async () => {
    // The adaptive limit brought down to its floor, under a higher ceiling: what a storm leaves.
    controller = new AdmissionController({
      maxInFlight: LIMIT * 2,
      minInFlight: LIMIT,
      targetDelayMs: 50,
      callerIdleMs: 60_000,
      pushbackMs: PUSHBACK_MS,
    });
    while (controller.limit > LIMIT) controller.adapt(Number.POSITIVE_INFINITY);
    server = await startTestServer({}, controller);
  });

  afterAll(async () => {
    server.stubs.releaseHolds();
    await server.running.close(1_000);
  });

  it("refuses a flooding caller on every protocol while another caller is answered, and admits it again after", async () => {
    const flooder = createTestClient("grpc-js", server);
    const clients: TestClient[] = CLIENT_KINDS.map((kind) => createTestClient(kind, server));
    try {
      // The token service alone takes the whole limit with calls that wait.
      const holding = Array.from({ length: LIMIT }, () =>
        flooder.call(ConnectionService.method.getConnection, { id: HOLD_ID }, { headers: tokenService }),
      );
      while (server.stubs.held < LIMIT) await new Promise((resolve) => setTimeout(resolve, 10));
      const handled = server.observed.length;

      for (const client of clients) {
        const refused = await client.call(
          ConnectionService.method.getConnection,
          { id: "cxn_more" },
          { headers: tokenService },
        );
        expectOverloaded(refused);
        // The dashboard's part of the limit is its own, whoever holds the rest.
        const answered = await client.call(
          ConnectionService.method.getConnection,
          { id: "cxn_dashboard" },
          { headers: dashboard },
        );
        expect(answered.ok, client.name).toBe(true);
      }
      // Only the dashboard's calls reached a handler; the refusals were answered before any work.
      expect(server.observed.slice(handled).filter((entry) => entry.code === Code.ResourceExhausted)).toHaveLength(
        clients.length,
      );
      expect(server.stubs.held).toBe(LIMIT);

      server.stubs.releaseHolds();
      for (const outcome of await Promise.all(holding)) expect(outcome.ok).toBe(true);
      const again = await flooder.call(
        ConnectionService.method.getConnection,
        { id: "cxn_x" },
        { headers: tokenService },
      );
      expect(again.ok).toBe(true);
      expect(controller.snapshot().inFlight).toBe(0);
    } finally {
      flooder.close();
      for (const client of clients) client.close();
    }
  });
});
