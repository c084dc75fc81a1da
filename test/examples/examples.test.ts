// The client examples in examples/, compiled with tsc and run as processes against a real server:
// the token service's check (gRPC protocol, deadline, retries through UNAVAILABLE while a replica
// comes up) and the dashboard BFF's consent (activation with the etag the user saw).

import { execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { rmSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testDatabases } from "../support/databases.js";
import { registerOrganizations, startTestService, type TestService } from "../support/service.js";

const execFileAsync = promisify(execFile);
const ROOT = new URL("../..", import.meta.url).pathname;
const SQLITE = testDatabases.find((database) => database.kind === "sqlite-memory");
if (SQLITE === undefined) throw new Error("no in-memory SQLite test database");

interface Ran {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs a compiled example with node; resolves with its exit code and output. `onStderr` sees the
 * standard error as it grows.
 */
function runExample(
  script: string,
  args: string[],
  env: Record<string, string>,
  onStderr: (stderr: string) => void = () => {},
): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, ...args], { env: { ...process.env, ...env } });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.stderr.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
      onStderr(stderr);
    });
    child.once("error", reject);
    child.once("exit", (code) => resolve({ code, stdout, stderr }));
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

describe("client examples", () => {
  const outDir = join(ROOT, "node_modules", ".cache", `connections-examples-${randomBytes(4).toString("hex")}`);
  const tokenCheck = join(outDir, "examples", "token-service", "check.js");
  const activate = join(outDir, "examples", "dashboard-bff", "activate.js");
  let service: TestService;
  let acme: string;
  let globex: string;
  let connectionId: string;
  let createdEtag: string;

  beforeAll(async () => {
    await execFileAsync("npx", ["tsc", "-p", "examples/tsconfig.json", "--outDir", outDir], { cwd: ROOT });
    service = await startTestService(SQLITE);
    [acme = "", globex = ""] = await registerOrganizations(service.client("connect-grpc"), 2);
    const gateway = service.client("connect-grpc").as({ caller: "api-gateway", organizationId: acme });
    const { connection } = await gateway.createConnection({
      destinationOrganizationId: globex,
      scopes: ["account.read"],
      name: "Acme to Globex",
    });
    connectionId = connection?.id ?? "";
    createdEtag = connection?.etag ?? "";
    // The source changes its mind and back: the Connection is PENDING again, with a new etag.
    await gateway.deactivateConnection({ id: connectionId });
    await gateway.reactivateConnection({ id: connectionId });
  }, 120_000);

  afterAll(async () => {
    await service?.close();
    rmSync(outDir, { recursive: true, force: true });
  });

  it("dashboard BFF: refuses to consent to a Connection that changed since the user saw it", async () => {
    const ran = await runExample(activate, [globex, connectionId, createdEtag], { ADDR: service.baseUrl });
    expect(ran.stderr).toBe("");
    expect(ran.code).toBe(1);
    expect(JSON.parse(ran.stdout)).toMatchObject({ outcome: "changed-meanwhile", state: "STATE_PENDING" });
  });

  it("dashboard BFF: consents to what it shows, with that etag", async () => {
    const ran = await runExample(activate, [globex, connectionId], { ADDR: service.baseUrl });
    expect(ran.stderr).toBe("");
    expect(ran.code).toBe(0);
    expect(JSON.parse(ran.stdout)).toMatchObject({ outcome: "activated", state: "STATE_ACTIVE" });
  });

  it("token service: checks over gRPC, allowed for a granted scope and denied for another", async () => {
    const allowed = await runExample(tokenCheck, [connectionId, acme, "account.read"], { ADDR: service.baseUrl });
    expect({ code: allowed.code, stderr: allowed.stderr }).toEqual({ code: 0, stderr: "" });
    expect(JSON.parse(allowed.stdout)).toEqual({ allowed: true, reason: "REASON_ALLOWED" });
    const denied = await runExample(tokenCheck, [connectionId, acme, "transaction.read"], { ADDR: service.baseUrl });
    expect(denied.code).toBe(1);
    expect(JSON.parse(denied.stdout)).toEqual({ allowed: false, reason: "REASON_SCOPE_NOT_GRANTED" });
  });

  it("token service: retries through UNAVAILABLE until a replica comes up on its address", {
    timeout: 60_000,
  }, async () => {
    const port = await freePort();
    let firstRetry: () => void = () => {};
    const retried = new Promise<void>((resolve) => {
      firstRetry = resolve;
    });
    const ran = runExample(
      tokenCheck,
      ["cxn_absent", acme, "account.read"],
      { ADDR: `http://127.0.0.1:${port}`, DEADLINE_MS: "50000", MAX_ATTEMPTS: "100000" },
      (stderr) => {
        if (stderr.includes("retrying")) firstRetry();
      },
    );
    // Once the first attempt has failed (connection refused), a replica starts on that port.
    await Promise.race([retried, ran]);
    const replica = await startTestService(SQLITE, { PORT: String(port) });
    try {
      const result = await ran;
      expect(result.stderr).toMatch(/^attempt 1: .*; retrying$/m);
      expect(JSON.parse(result.stdout)).toEqual({ allowed: false, reason: "REASON_CONNECTION_NOT_FOUND" });
    } finally {
      await replica.close();
    }
  });

  it("token service: gives up at the deadline, retries included", async () => {
    const port = await freePort();
    const ran = await runExample(tokenCheck, ["cxn_absent", acme, "account.read"], {
      ADDR: `http://127.0.0.1:${port}`,
      DEADLINE_MS: "500",
      MAX_ATTEMPTS: "1000",
    });
    expect(ran.code).toBe(2);
    expect(ran.stderr).toContain("check failed");
  });
});
