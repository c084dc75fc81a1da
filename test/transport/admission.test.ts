// Admission control through the real transport, on every client stack and protocol: a caller that
// holds the whole limit gets RESOURCE_EXHAUSTED OVERLOADED with grpc-retry-pushback-ms for more,
// while another caller's calls are answered; and a refused call never reaches its handler. With a
// queue, a caller's burst beyond the limit waits for room instead, unread, and is answered in full.

import { spawn } from "node:child_process";
import { availableParallelism } from "node:os";
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConnectionService } from "../../gen/connections/v1/connection_service_pb.js";
import { OrganizationService } from "../../gen/connections/v1/organization_service_pb.js";
import { AdmissionController } from "../../src/api/rpc/admission.js";
import { adaptToEventLoopDelay } from "../../src/api/rpc/admission-clock.js";
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

/** A controller whose adaptive limit is brought down to `floor` under a higher ceiling: what a storm leaves. */
function controllerAtFloor(floor: number, maxInFlight: number, maxQueued: number): AdmissionController {
  const controller = new AdmissionController({
    maxInFlight,
    minInFlight: floor,
    targetDelayMs: 50,
    callerIdleMs: 60_000,
    pushbackMs: PUSHBACK_MS,
    maxQueued,
  });
  while (controller.limit > floor) controller.adapt(Number.POSITIVE_INFINITY);
  return controller;
}

describe("admission control", () => {
  let server: TestServer;
  let controller: AdmissionController;

  beforeAll(async () => {
    // No queue: a call for which there is no room is refused at once.
    controller = controllerAtFloor(LIMIT, LIMIT * 2, 0);
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

describe("admission control: a burst beyond the limit waits for room", () => {
  const FLOOR = 8;
  let server: TestServer;
  let controller: AdmissionController;
  let stopClock: () => void;

  beforeAll(async () => {
    // The adaptive limit at its floor, as a loaded machine or a storm leaves it, and the clock
    // that moves it running as in the service.
    controller = controllerAtFloor(FLOOR, 64, 1000);
    server = await startTestServer({}, controller);
    stopClock = adaptToEventLoopDelay(controller);
  });

  afterAll(async () => {
    stopClock();
    server.stubs.releaseHolds();
    await server.running.close(1_000);
  });

  it("answers 650 concurrent calls of one client on one channel on a loaded machine, never more at work than the limit", async () => {
    // The machine loaded by other processes: one busy process per core.
    const hogs = Array.from({ length: availableParallelism() }, () =>
      spawn(process.execPath, ["-e", "for (;;) {}"], { stdio: "ignore" }),
    );
    const client = createTestClient("grpc-js", server);
    try {
      // As in the gRPC C-core interop suite: the channel carries a second caller, whose part of the
      // limit stays reserved while it is idle.
      const provisioning = { ...bearer("dev-provisioning") };
      const created = await client.call(
        OrganizationService.method.createOrganization,
        { id: "org_a", name: "A" },
        { headers: provisioning },
      );
      expect(created.ok).toBe(true);
      const dashboardBurst = { ...bearer("dev-dashboard-bff"), ...actingFor };
      // 600 reads held at work, and among them 50 writes: each waits its turn and is done once.
      const activations = server.stubs.activations;
      const calls = Array.from({ length: 650 }, (_, index) =>
        index % 13 === 6
          ? client.call(
              ConnectionService.method.activateConnection,
              { id: "cxn_a" },
              { headers: dashboardBurst, timeoutMs: 120_000 },
            )
          : client.call(
              ConnectionService.method.getConnection,
              { id: HOLD_ID },
              { headers: dashboardBurst, timeoutMs: 120_000 },
            ),
      );
      let settled = false;
      const all = Promise.all(calls).finally(() => {
        settled = true;
      });
      // The handlers hold each call until released here: what is at work is what admission let in.
      let mostAtWork = 0;
      while (!settled) {
        mostAtWork = Math.max(mostAtWork, server.stubs.held);
        server.stubs.releaseHolds();
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      const outcomes = await all;
      const failures = outcomes.filter((outcome) => !outcome.ok);
      expect(failures.map((failure) => !failure.ok && `${failure.code} ${failure.errorInfo?.reason}`)).toEqual([]);
      expect(server.stubs.activations - activations).toBe(50);
      expect(mostAtWork).toBeGreaterThan(0);
      expect(mostAtWork).toBeLessThanOrEqual(controller.limit);
      const waits = controller.snapshot().waitsByCaller.get("dashboard-bff");
      expect(waits?.admitted, "calls that waited and were then admitted").toBeGreaterThan(0);
      expect(controller.snapshot().inFlight).toBe(0);
      expect(controller.snapshot().waitingByCaller).toEqual(new Map());
    } finally {
      client.close();
      for (const hog of hogs) hog.kill();
    }
  });
});

describe("admission control: a wait for room ends at the call's deadline", () => {
  const LIMIT_HERE = 8;
  let server: TestServer;
  let controller: AdmissionController;

  beforeAll(async () => {
    controller = controllerAtFloor(LIMIT_HERE, 64, 1000);
    server = await startTestServer({}, controller);
  });

  afterAll(async () => {
    server.stubs.releaseHolds();
    await server.running.close(1_000);
  });

  it.each(["grpc-js", "connect-node Connect JSON (HTTP/1.1)"] as const)(
    "%s: a write that waits past its deadline is answered DEADLINE_EXCEEDED and never done",
    async (kind) => {
      const client = createTestClient(kind, server);
      const holder = createTestClient("grpc-js", server);
      try {
        const holding = Array.from({ length: controller.limit }, () =>
          holder.call(ConnectionService.method.getConnection, { id: HOLD_ID }, { headers: dashboard }),
        );
        while (server.stubs.held < controller.limit) await new Promise((resolve) => setTimeout(resolve, 10));
        const handled = server.observed.length;
        // Ended by the service's sweep (expired) or by the client's own timer first (cancelled).
        const ended = () => {
          const waits = controller.snapshot().waitsByCaller.get("dashboard-bff");
          return (waits?.expired ?? 0) + (waits?.cancelled ?? 0);
        };
        const endedBefore = ended();
        const activations = server.stubs.activations;
        const late = await client.call(
          ConnectionService.method.activateConnection,
          { id: "cxn_late" },
          { headers: dashboard, timeoutMs: 300 },
        );
        expect(late.ok).toBe(false);
        if (!late.ok) expect(late.code).toBe(Code.DeadlineExceeded);
        while (ended() === endedBefore) await new Promise((resolve) => setTimeout(resolve, 10));
        expect(controller.snapshot().waitingByCaller).toEqual(new Map());
        // The only trace of it is the refusal, if the service answered before the client gave up.
        expect(server.observed.slice(handled).map((entry) => entry.code)).not.toContain(0);
        expect(server.stubs.activations, "the write was never done").toBe(activations);
        let settled = false;
        const all = Promise.all(holding).finally(() => {
          settled = true;
        });
        while (!settled) {
          server.stubs.releaseHolds();
          await new Promise((resolve) => setTimeout(resolve, 5));
        }
        for (const outcome of await all) expect(outcome.ok).toBe(true);
      } finally {
        server.stubs.releaseHolds();
        client.close();
        holder.close();
      }
    },
  );
});
