// close(graceMs): RPCs in flight finish within the grace period, the ones that outlive it are
// cancelled, no new connection is accepted, idle keep-alive connections do not hold it open, and
// it resolves. "In flight" is seen in the handlers, and the calls that finish in time are released
// by the test, so nothing depends on how fast a loaded machine runs them.

import { Code } from "@connectrpc/connect";
import { afterEach, describe, expect, it } from "vitest";
import { ConnectionService } from "../../gen/connections/v1/connection_service_pb.js";
import { OrganizationService } from "../../gen/connections/v1/organization_service_pb.js";
import { until } from "../support/until.js";
import { bearer, createTestClient, HOLD_ID, SLEEP_PREFIX, startTestServer, type TestClient } from "./harness.js";

const { getConnection } = ConnectionService.method;
const { getOrganization } = OrganizationService.method;
const AS_BFF = { headers: { ...bearer("dev-dashboard-bff"), "x-organization-id": "org_a" } };
const AS_PROVISIONING = { headers: bearer("dev-provisioning") };

describe("graceful shutdown", () => {
  const clients: TestClient[] = [];
  afterEach(() => {
    for (const client of clients.splice(0)) client.close();
  });

  async function serverWithClients() {
    const server = await startTestServer();
    const grpcJs = createTestClient("grpc-js", server);
    const http1 = createTestClient("connect-node Connect JSON (HTTP/1.1)", server);
    const http2 = createTestClient("connect-node Connect binary (h2)", server);
    clients.push(grpcJs, http1, http2);
    return { server, grpcJs, http1, http2 };
  }

  it("resolves promptly when nothing is in flight, despite idle keep-alive connections", async () => {
    const { server, grpcJs, http1, http2 } = await serverWithClients();
    for (const client of [grpcJs, http1, http2]) {
      expect((await client.call(getOrganization, { id: "org_a" }, AS_PROVISIONING)).ok, client.name).toBe(true);
    }
    const graceMs = 20_000;
    const started = Date.now();
    await server.running.close(graceMs);
    // Waiting for the idle connections would take the whole grace period.
    expect(Date.now() - started).toBeLessThan(graceMs / 2);
  });

  it("lets RPCs finish within the grace period, cancels the ones that outlive it, and refuses new connections", async () => {
    const { server, grpcJs, http1, http2 } = await serverWithClients();
    const quickOverHttp2 = grpcJs.call(getConnection, { id: HOLD_ID }, AS_BFF);
    const quickOverHttp1 = http1.call(getConnection, { id: HOLD_ID }, AS_BFF);
    // Far longer than the grace period: these can only end in time by being cancelled.
    const slow = grpcJs.call(getConnection, { id: `${SLEEP_PREFIX}20000` }, AS_BFF);
    const slowViaConnect = http2.call(getConnection, { id: `${SLEEP_PREFIX}20000` }, AS_BFF);
    await until(() => server.stubs.held === 2 && server.stubs.sleepsStarted === 2, "four calls in the handlers");

    const graceMs = 1_000;
    const started = Date.now();
    const closing = server.running.close(graceMs);
    // Closing has begun; the held calls end now, within the grace period.
    server.stubs.releaseHolds();
    const fresh = createTestClient("grpc-js", server);
    clients.push(fresh);
    const refused = await fresh.call(getOrganization, { id: "org_a" }, AS_PROVISIONING);
    expect(refused.ok || refused.code).toBe(Code.Unavailable);

    expect((await quickOverHttp2).ok).toBe(true);
    expect((await quickOverHttp1).ok).toBe(true);
    const [cancelled, cancelledViaConnect] = await Promise.all([slow, slowViaConnect]);
    // grpc-js reports the dropped connection as UNAVAILABLE, connect-node the reset stream as CANCELLED.
    for (const outcome of [cancelled, cancelledViaConnect]) {
      expect(outcome.ok || outcome.code).toBeOneOf([Code.Unavailable, Code.Canceled]);
    }
    await closing;
    // It waited out the grace period for the slow calls (less the few milliseconds by which a timer
    // may start early, from the event loop's cached time), and did not wait for them to end.
    expect(Date.now() - started).toBeGreaterThanOrEqual(graceMs - 50);
    expect(server.stubs.sleepsFinished).toBe(0);
  });
});
