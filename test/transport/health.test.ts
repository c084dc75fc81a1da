// grpc.health.v1: per-service status that follows readiness(), Watch, and NOT_SERVING at shutdown.
// No credentials are sent: health never goes through the pipeline.

import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { afterEach, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import { until } from "../support/until.js";
import { startTestServer, type TestServer } from "./harness.js";

const SERVICES = [
  "",
  "connections.v1.ConnectionService",
  "connections.v1.OrganizationService",
  "grpc.health.v1.Health",
  "grpc.reflection.v1.ServerReflection",
  "grpc.reflection.v1alpha.ServerReflection",
];

describe("grpc.health.v1.Health", () => {
  const cleanups: (() => unknown)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  async function started() {
    const server: TestServer = await startTestServer();
    const sessionManager = new Http2SessionManager(server.baseUrl);
    cleanups.push(
      () => server.running.close(1_000),
      () => sessionManager.abort(),
    );
    const health = createClient(Health, createGrpcTransport({ baseUrl: server.baseUrl, sessionManager }));
    return { server, health };
  }

  it("reports every service SERVING and an unknown one NOT_FOUND", async () => {
    const { health } = await started();
    for (const service of SERVICES) {
      expect((await health.check({ service })).status, service).toBe(ServingStatus.SERVING);
    }
    const listed = await health.list({});
    expect(Object.keys(listed.statuses).sort()).toEqual([...SERVICES].sort());

    const unknown = await health.check({ service: "nope.v1.Nope" }).catch((error: unknown) => error);
    expect(unknown).toBeInstanceOf(ConnectError);
    expect((unknown as ConnectError).code).toBe(Code.NotFound);
  });

  it("follows readiness: NOT_SERVING while the database does not answer, and Watch sees each change", async () => {
    const { server, health } = await started();
    const controller = new AbortController();
    cleanups.push(() => controller.abort());
    const watched: ServingStatus[] = [];
    const watching = (async () => {
      for await (const { status } of health.watch({ service: "" }, { signal: controller.signal })) watched.push(status);
    })().catch(() => {});

    await until(async () => watched.length === 1, "Watch sends the current status");
    expect(watched).toEqual([ServingStatus.SERVING]);

    server.setReady(false);
    await until(
      async () => (await health.check({ service: "" })).status === ServingStatus.NOT_SERVING,
      "Check reports NOT_SERVING",
    );
    const check = async (service: string) => (await health.check({ service })).status;
    expect(await check("connections.v1.ConnectionService")).toBe(ServingStatus.NOT_SERVING);
    expect(await check("grpc.reflection.v1.ServerReflection")).toBe(ServingStatus.SERVING);
    await until(async () => watched.length === 2, "Watch sees NOT_SERVING");

    server.setReady(true);
    await until(async () => watched.length === 3, "Watch sees SERVING again");
    expect(watched).toEqual([ServingStatus.SERVING, ServingStatus.NOT_SERVING, ServingStatus.SERVING]);
    controller.abort();
    await watching;
  });

  it("sends SERVICE_UNKNOWN on Watch of an unknown service and keeps the stream open", async () => {
    const { health } = await started();
    const controller = new AbortController();
    const stream = health.watch({ service: "nope.v1.Nope" }, { signal: controller.signal })[Symbol.asyncIterator]();
    expect((await stream.next()).value?.status).toBe(ServingStatus.SERVICE_UNKNOWN);
    const next = stream.next();
    const outcome = await Promise.race([next.then(() => "ended"), sleep(200, "open")]);
    expect(outcome).toBe("open");
    controller.abort();
    await next.catch(() => {});
  });

  it("turns NOT_SERVING as soon as shutdown begins, and Watch streams send that and end", async () => {
    const { server, health } = await started();
    const watched: ServingStatus[] = [];
    const watching = (async () => {
      for await (const { status } of health.watch({ service: "connections.v1.ConnectionService" })) {
        watched.push(status);
      }
      return "ended";
    })();
    await until(async () => watched.length === 1, "Watch sends the current status");

    const closing = server.running.close(5_000);
    for (const service of SERVICES)
      expect(server.running.health.status(service), service).toBe(ServingStatus.NOT_SERVING);
    expect(await watching).toBe("ended");
    expect(watched).toEqual([ServingStatus.SERVING, ServingStatus.NOT_SERVING]);
    await closing;
  });
});
