// close(graceMs): RPCs in flight finish within the grace period, the ones that outlive it are
// cancelled, no new connection is accepted, idle keep-alive connections do not hold it open, and
// it resolves.

import { setTimeout as sleep } from "node:timers/promises";
import { Code } from "@connectrpc/connect";
import { afterEach, describe, expect, it } from "vitest";
import { ConnectionService } from "../../gen/connections/v1/connection_service_pb.js";
import { OrganizationService } from "../../gen/connections/v1/organization_service_pb.js";
import { bearer, createTestClient, SLEEP_PREFIX, startTestServer, type TestClient } from "./harness.js";

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
    const started = Date.now();
    await server.running.close(10_000);
    expect(Date.now() - started).toBeLessThan(1_000);
  });

  it("lets RPCs finish within the grace period, cancels the ones that outlive it, and refuses new connections", async () => {
    const { server, grpcJs, http1, http2 } = await serverWithClients();
    const quickOverHttp2 = grpcJs.call(getConnection, { id: `${SLEEP_PREFIX}300` }, AS_BFF);
    const quickOverHttp1 = http1.call(getConnection, { id: `${SLEEP_PREFIX}300` }, AS_BFF);
    const slow = grpcJs.call(getConnection, { id: `${SLEEP_PREFIX}20000` }, AS_BFF);
    const slowViaConnect = http2.call(getConnection, { id: `${SLEEP_PREFIX}20000` }, AS_BFF);
    await sleep(100);

    const started = Date.now();
    const closing = server.running.close(1_000);
    await sleep(50);
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
    const tookMs = Date.now() - started;
    expect(tookMs).toBeGreaterThanOrEqual(950);
    expect(tookMs).toBeLessThan(2_500);
  });
});
