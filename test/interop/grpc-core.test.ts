// Interop: gRPC C-core, through Debian's python3-grpcio, against the real service. A client stack
// that nobody on this project wrote checks every RPC (succeeding, and failing with the ErrorInfo
// decoded from grpc-status-details-bin), gzip, deadlines, cancellation, metadata, 650 concurrent
// calls on one channel (500 of them ~180 KB pages) while another client pings and watches health,
// keepalive pings, health (also C-core's own health checking) and reflection, and on PostgreSQL a
// rolling restart of three replicas under a client with retries off that fails no call.
//
// The message classes are generated from proto/ by `protoc --python_out` into a temporary
// directory for each run; grpc_core_client.py runs one scenario per process and prints a JSON
// report that the assertions here read. Where the bytes on the wire matter (keepalive, gzip) the
// client talks through H2FrameTap, which counts the frames each side sent.
//
// Needs /usr/bin/python3 with grpc and protobuf, and protoc (Debian: python3-grpcio
// python3-protobuf protobuf-compiler; .ci/run installs them). Without them the suite is skipped
// with a message saying so.

import { execFile, spawnSync } from "node:child_process";
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SERVICE_CONFIG } from "../../examples/retry-policy.js";
import { ConnectionService } from "../../gen/connections/v1/connection_service_pb.js";
import { OrganizationService } from "../../gen/connections/v1/organization_service_pb.js";
import { provisionDatabase, testDatabases } from "../support/databases.js";
import { freePort } from "../support/ports.js";
import { type ServiceProcess, startServiceProcess } from "../support/process.js";
import { startTestService, type TestService } from "../support/service.js";
import { H2FrameTap } from "./h2-frame-tap.js";

const run = promisify(execFile);
const PYTHON = "/usr/bin/python3";
const CLIENT = join(import.meta.dirname, "grpc_core_client.py");
const PROTO_ROOT = join(import.meta.dirname, "..", "..", "proto");
const INSTALL_HINT =
  "apt-get install nghttp2-client python3-grpcio python3-protobuf protobuf-compiler libprotobuf-dev (as .ci/run does)";

/** Why the suite cannot run here, or undefined when it can. */
function missingPrerequisite(): string | undefined {
  const python = spawnSync(PYTHON, ["-c", "import grpc, google.protobuf"], { encoding: "utf8" });
  if (python.status !== 0) return `${PYTHON} cannot import grpc and google.protobuf`;
  const protoc = spawnSync("protoc", ["--version"], { encoding: "utf8" });
  if (protoc.status !== 0) return "protoc is not on PATH";
  const wellKnown = spawnSync(
    "protoc",
    [`--proto_path=${PROTO_ROOT}`, "--descriptor_set_out=/dev/null", "connections/v1/connection.proto"],
    { encoding: "utf8" },
  );
  if (wellKnown.status !== 0) return "protoc cannot find the well-known types (google/protobuf/*.proto)";
  return undefined;
}

const missing = missingPrerequisite();
if (missing !== undefined) console.info(`gRPC C-core interop suite skipped: ${missing}; ${INSTALL_HINT}`);

const SERVICES = [ConnectionService, OrganizationService];
const ALL_RPCS = SERVICES.flatMap((service) => service.methods.map((method) => method.name)).sort();

/** Milliseconds; generous, because the machine may be busy. Success never waits this long. */
const SCENARIO_TIMEOUT_MS = 150_000;
/**
 * On a busy machine the last of 500 queued large pages can wait longer than the service's default
 * 30 s cap on any RPC; that cap is not what this suite is about.
 */
const SERVICE_ENV = { MAX_DEADLINE_MS: "120000" };
/**
 * rolling: round-robin over the replicas, each watched through grpc.health.v1 (C-core starts a
 * Watch on every connection), so that a draining replica's NOT_SERVING takes it out of the
 * rotation before its GOAWAY; without retries, that is the only way not to lose calls to a GOAWAY
 * (docs/operations.md, "Rolling restarts").
 */
const ROLLING_SERVICE_CONFIG = { loadBalancingConfig: [{ round_robin: {} }], healthCheckConfig: { serviceName: "" } };
/** rolling: calls before the first restart, and after each replica is back. */
const ROLLING_PAUSE_MS = 2_000;
/** keepalive: the client's grpc.keepalive_time_ms, and how long the scenario keeps calling. */
const KEEPALIVE_MS = 1_000;
const KEEPALIVE_SECONDS = 4;

interface ScenarioReport<T> {
  readonly scenario: string;
  readonly grpc: string;
  readonly ok: boolean;
  readonly error: string | null;
  readonly observed: T;
}

/** Runs one scenario of grpc_core_client.py; resolves with what it observed, or fails readably. */
async function scenario<T>(name: string, target: string, generated: string, extra: readonly string[] = []): Promise<T> {
  const args = [CLIENT, name, "--target", target, "--generated", generated, ...extra];
  let stdout: string;
  let stderr: string;
  try {
    ({ stdout, stderr } = await run(PYTHON, args, { timeout: SCENARIO_TIMEOUT_MS, maxBuffer: 16 * 1024 * 1024 }));
  } catch (error) {
    const failed = error as { stdout?: string; stderr?: string; code?: number | string; signal?: string };
    stdout = failed.stdout ?? "";
    stderr = failed.stderr ?? "";
    if (!stdout.trim()) {
      throw new Error(
        `python scenario "${name}" ended (${failed.signal ?? failed.code}) without a report\n${stderr.slice(-4_000)}`,
      );
    }
  }
  const report = JSON.parse(stdout.trim().split("\n").at(-1) ?? "") as ScenarioReport<T>;
  if (!report.ok) {
    throw new Error(
      `python scenario "${name}" (grpcio ${report.grpc}) failed: ${report.error}\n` +
        `observed: ${JSON.stringify(report.observed)}\nstderr: ${stderr.slice(-2_000)}`,
    );
  }
  return report.observed;
}

/** The same promise, marked as handled: a scenario started early is awaited by its own test. */
function settled<T>(promise: Promise<T>): Promise<T> {
  promise.catch(() => {});
  return promise;
}

/** Generates the Python message classes for every file in proto/ into a new temporary directory. */
async function generatePython(): Promise<string> {
  const directory = await mkdtemp(join(tmpdir(), "connections-interop-"));
  const files = (await readdir(PROTO_ROOT, { recursive: true }))
    .filter((file) => file.endsWith(".proto"))
    .map((file) => relative(PROTO_ROOT, join(PROTO_ROOT, file)));
  await run("protoc", [`--proto_path=${PROTO_ROOT}`, `--python_out=${directory}`, ...files]);
  return directory;
}

interface ConcurrencyObserved {
  calls: number;
  succeeded: number;
  failures: Record<string, number>;
  largestResponseBytes: number;
  largeCalls: number;
  watcher: { connectivity: string[]; leftReady: string[]; statuses: string[]; ended: string | null };
}

interface KeepaliveObserved {
  calls: number;
  connectivity: string[];
  leftReady: string[];
}

interface ErrorCase {
  readonly rpc: string;
  readonly expected: { code: string; reason: string; domain: string; metadata: Record<string, string> };
  readonly observed: {
    code: string;
    reason: string;
    domain: string;
    metadata: Record<string, string>;
    message: string;
    statusDetailsCode: number | null;
    statusDetailsMessage: string | null;
    requestId: string | undefined;
  };
}

/** The gRPC code number of a C-core StatusCode name ("NOT_FOUND" -> 5). */
function codeNumber(name: string): number {
  const camel = name.toLowerCase().replace(/_(.)/g, (_, letter: string) => letter.toUpperCase());
  const key = (camel.charAt(0).toUpperCase() + camel.slice(1)) as keyof typeof Code;
  return Code[key];
}

// SQLite in a file (as production runs it), and PostgreSQL when TEST_DATABASE_URL is set. The
// transport scenarios do not depend on the database, so they run on SQLite only.
const databases = testDatabases.filter((database) => database.kind !== "sqlite-memory");

for (const database of databases) {
  const everything = database.dialect === "sqlite";
  describe.skipIf(missing !== undefined || !database.enabled)(`gRPC C-core interop [${database.name}]`, () => {
    let service: TestService;
    let generated: string;
    let keepaliveTap: H2FrameTap | undefined;
    let keepalive: Promise<KeepaliveObserved> | undefined;

    beforeAll(async () => {
      [service, generated] = await Promise.all([startTestService(database, SERVICE_ENV), generatePython()]);
      if (everything) {
        // Mostly idle time, so it runs alongside the short scenarios; its test below awaits it,
        // before the concurrency scenario loads the service.
        keepaliveTap = await H2FrameTap.start(service.port);
        keepalive = settled(
          scenario("keepalive", keepaliveTap.address, generated, [
            `--keepalive-ms=${KEEPALIVE_MS}`,
            `--keepalive-seconds=${KEEPALIVE_SECONDS}`,
          ]),
        );
      }
    });

    afterAll(async () => {
      await keepalive?.catch(() => {});
      await keepaliveTap?.close();
      await service?.close();
      if (generated !== undefined) await rm(generated, { recursive: true, force: true });
    });

    it("calls every RPC of both services successfully", async () => {
      const observed = await scenario<{ succeeded: string[]; eventTypes: string[] }>(
        "rpcs",
        service.address,
        generated,
      );
      expect([...new Set(observed.succeeded)].sort(), "RPCs called successfully").toEqual(ALL_RPCS);
    });

    it("decodes ErrorInfo (domain connections.v1, the right reason) from grpc-status-details-bin for every RPC", async () => {
      const { cases } = await scenario<{ cases: ErrorCase[] }>("errors", service.address, generated);
      for (const { rpc, expected, observed } of cases) {
        const seen = { code: observed.code, reason: observed.reason, domain: observed.domain };
        expect(seen, `${rpc}: ${observed.message}`).toEqual({
          code: expected.code,
          reason: expected.reason,
          domain: expected.domain,
        });
        expect(observed.metadata, `${rpc} ErrorInfo metadata`).toMatchObject(expected.metadata);
        expect(observed.statusDetailsCode, `${rpc}: google.rpc.Status.code`).toBe(codeNumber(observed.code));
        expect(observed.statusDetailsMessage, `${rpc}: google.rpc.Status.message`).toBe(observed.message);
        expect(observed.message, `${rpc}: a message a person can act on`).not.toBe("");
        expect(observed.requestId, `${rpc}: x-request-id on the error`).toMatch(/^req_/);
      }
      expect([...new Set(cases.map((c) => c.rpc))].sort(), "RPCs seen failing").toEqual(ALL_RPCS);
    });

    it("metadata: x-request-id echoed or generated; x-actor and x-organization-id reach the Connection", async () => {
      const observed = await scenario<Record<string, string | null>>("metadata", service.address, generated);
      expect(observed.echoedRequestId).toBe(observed.sentRequestId);
      expect(observed.errorRequestId).toBe(observed.sentErrorRequestId);
      expect(observed.generatedRequestId).toMatch(/^req_\w+$/);
      expect(observed.creator).toBe("user:usr_interop");
      expect(observed.source).toBe(observed.expectedSource);
      expect(observed.eventActor).toBe("user:usr_interop");
      expect(observed.eventRequestId).toBe(observed.sentRequestId);
      expect(observed.eventActorOrganization).toBe(observed.expectedSource);
    });

    it("health: Check and Watch without credentials", async () => {
      const observed = await scenario<{
        check: Record<string, string>;
        checkUnknown: string;
        watchFirst: Record<string, string>;
        healthCheckedChannel: string;
      }>("health", service.address, generated);
      expect(observed).toEqual({
        check: {
          "": "SERVING",
          "connections.v1.ConnectionService": "SERVING",
          "connections.v1.OrganizationService": "SERVING",
          "grpc.health.v1.Health": "SERVING",
        },
        checkUnknown: "NOT_FOUND",
        watchFirst: { "": "SERVING", "no.such.Service": "SERVICE_UNKNOWN" },
        healthCheckedChannel: "SERVING",
      });
    });

    it.runIf(everything)("gzip: compressed requests are read and compressed answers decode", async () => {
      const tap = await H2FrameTap.start(service.port);
      try {
        const observed = await scenario<Record<string, { listed: number; errorReason: string }>>(
          "gzip",
          tap.address,
          generated,
        );
        expect(observed).toEqual({
          call: { listed: 1, errorReason: "CONNECTION_NOT_FOUND" },
          channel: { listed: 1, errorReason: "CONNECTION_NOT_FOUND" },
          reflection: { files: expect.any(Number) },
        });
        // Two organizations, CreateConnection and GetConnection per pass; C-core sends a message
        // uncompressed when gzip would not make it smaller (ListConnections' few bytes here).
        expect(tap.fromClient.compressedMessages, "gzip-compressed requests").toBeGreaterThanOrEqual(8);
        expect(tap.fromService.compressedMessages, "a gzip-compressed answer reached the client").toBeGreaterThan(0);
      } finally {
        await tap.close();
      }
    });

    it.runIf(everything)(
      "deadlines: a 1 ms timeout (unary) and a 300 ms one (stream) are DEADLINE_EXCEEDED, a normal one succeeds",
      async () => {
        const observed = await scenario("deadline", service.address, generated);
        expect(observed).toEqual({ tiny: "DEADLINE_EXCEEDED", stream: "DEADLINE_EXCEEDED" });
      },
    );

    it.runIf(everything)("cancellation: a unary future and a Watch stream, then the channel still serves", async () => {
      const observed = await scenario("cancel", service.address, generated);
      expect(observed).toEqual({ unaryCancelled: true, watchFirstStatus: "SERVING", watchEnded: "CANCELLED" });
    });

    it.runIf(everything)("reflection v1: lists the services and serves descriptors a client can build on", async () => {
      const observed = await scenario<{
        services: string[];
        files: string[];
        reflectedMethods: Record<string, string[]>;
        generatedMethods: Record<string, string[]>;
        unknownSymbol: number;
      }>("reflection", service.address, generated);
      expect(observed.services).toEqual(
        expect.arrayContaining([
          "connections.v1.ConnectionService",
          "connections.v1.OrganizationService",
          "grpc.health.v1.Health",
          "grpc.reflection.v1.ServerReflection",
        ]),
      );
      expect(observed.files).toEqual(
        expect.arrayContaining([
          "connections/v1/connection_service.proto",
          "connections/v1/organization_service.proto",
        ]),
      );
      expect(observed.reflectedMethods).toEqual(observed.generatedMethods);
      expect(observed.unknownSymbol).toBe(Code.NotFound);
    });

    it("replay: writes with a request_id, retried across forced GOAWAYs, answer what they answered first", async () => {
      const connectionAgeMs = 400;
      const aging = await startTestService(database, {
        MAX_CONNECTION_AGE_MS: String(connectionAgeMs),
        MAX_CONNECTION_AGE_GRACE_MS: "5000",
      });
      const tap = await H2FrameTap.start(aging.port);
      try {
        const observed = await scenario<{ replayed: string[]; events: string[]; createdScopes: string[] }>(
          "replay",
          tap.address,
          generated,
          [`--service-config=${JSON.stringify(SERVICE_CONFIG)}`, `--connection-age-ms=${connectionAgeMs}`],
        );
        expect(observed.replayed).toEqual([
          "ActivateConnection",
          "CreateConnection",
          "CreateOrganization",
          "DeactivateConnection",
          "ReactivateConnection",
          "UpdateConnection",
        ]);
        // One event per write, none per replay; the create's answer kept the scopes it had then.
        expect(observed.events).toEqual([
          "TYPE_CREATED",
          "TYPE_ACTIVATED",
          "TYPE_UPDATED",
          "TYPE_DEACTIVATED",
          "TYPE_REACTIVATED",
        ]);
        expect(observed.createdScopes).toEqual(["account.read", "inquiry.read"]);
        expect(tap.fromService.goaways.length, "GOAWAYs the service sent").toBeGreaterThanOrEqual(2);
        expect(tap.connections, "connections the client had to open").toBeGreaterThanOrEqual(3);
      } finally {
        await tap.close();
        await aging.close();
      }
    });

    // Replicas on one database: PostgreSQL. Without retries, any call a GOAWAY kept from a replica fails.
    it.runIf(database.dialect === "postgres")(
      "rolling restart of 3 replicas: a client with retries off, round-robin over them, fails no call",
      async () => {
        const provisioned = await provisionDatabase(database);
        const ports = await Promise.all([freePort(), freePort(), freePort()]);
        const start = (port: number) => startServiceProcess({ DATABASE_URL: provisioned.url, PORT: String(port) });
        const replicas: ServiceProcess[] = [];
        const stopFile = join(generated, "rolling.stop");
        try {
          // One after the other: the first migrates the new database.
          for (const port of ports) replicas.push(await start(port));
          const calling = scenario<{ calls: number; failures: Record<string, number> }>(
            "rolling",
            `ipv4:${ports.map((port) => `127.0.0.1:${port}`).join(",")}`,
            generated,
            [`--stop-file=${stopFile}`, `--service-config=${JSON.stringify(ROLLING_SERVICE_CONFIG)}`],
          );
          await sleep(ROLLING_PAUSE_MS);
          for (const [index, port] of ports.entries()) {
            expect(await replicas[index]?.stop(), `replica on ${port} drained and exited`).toBe(0);
            replicas[index] = await start(port);
            // Long enough for the client to connect to it again before the next one leaves.
            await sleep(ROLLING_PAUSE_MS);
          }
          await writeFile(stopFile, "");
          const observed = await calling;
          expect(observed.failures).toEqual({});
          expect(observed.calls).toBeGreaterThan(100);
        } finally {
          await Promise.all(replicas.map((replica) => replica.stop()));
          await provisioned.drop();
        }
      },
      SCENARIO_TIMEOUT_MS,
    );

    it.runIf(everything)("keepalive: a pinging client is answered and never sent away", async () => {
      const observed = await (keepalive as Promise<KeepaliveObserved>);
      const tap = keepaliveTap as H2FrameTap;
      expect(observed.leftReady, `connectivity: ${observed.connectivity.join(" -> ")}`).toEqual([]);
      expect(tap.connections, "one connection, never replaced").toBe(1);
      expect(tap.fromService.goaways, "GOAWAY codes from the service").toEqual([]);
      expect(tap.fromClient.pings, "keepalive pings sent").toBeGreaterThanOrEqual(2);
      expect(tap.fromService.pingAcks, "pings answered").toBeGreaterThanOrEqual(tap.fromClient.pings - 1);
    });

    it.runIf(everything)(
      "650 concurrent calls on one channel, 500 of them ~180 KB pages: every one succeeds",
      async () => {
        const observed = await scenario<ConcurrencyObserved>("concurrency", service.address, generated);
        expect(observed.failures).toEqual({});
        expect(observed.succeeded).toBe(observed.calls);
        expect(observed.calls).toBeGreaterThanOrEqual(650);
        expect(observed.largeCalls).toBe(500);
        expect(observed.largestResponseBytes).toBeGreaterThan(170_000);
        // Meanwhile another client, pinging every second and watching health, kept its
        // connection: the service went on answering PINGs and serving the stream under the load.
        const { watcher } = observed;
        expect(watcher.leftReady, `watcher connectivity: ${watcher.connectivity.join(" -> ")}`).toEqual([]);
        expect(watcher.statuses[0]).toBe("SERVING");
        expect(watcher.ended, "the Watch stream lasted until the client cancelled it").toBe("CANCELLED");
      },
      SCENARIO_TIMEOUT_MS + 10_000,
    );
  });
}
