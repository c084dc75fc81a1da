// The client examples in examples/, compiled with tsc and run as processes against a real server:
// the token service's check (gRPC protocol, deadline, retries through UNAVAILABLE while a replica
// comes up), its change-feed follower (revocations, resuming from its cursor across a restart), and
// the dashboard BFF's consent (activation with the etag the user saw).

import { type ChildProcessWithoutNullStreams, execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { provisionSqliteFile, testDatabases } from "../support/databases.js";
import { freePort } from "../support/ports.js";
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

const outDir = join(ROOT, "node_modules", ".cache", `connections-examples-${randomBytes(4).toString("hex")}`);
const tokenCheck = join(outDir, "examples", "token-service", "check.js");
const follow = join(outDir, "examples", "token-service", "follow.js");
const activate = join(outDir, "examples", "dashboard-bff", "activate.js");

beforeAll(async () => {
  await execFileAsync("npx", ["tsc", "-p", "examples/tsconfig.json", "--outDir", outDir], { cwd: ROOT });
}, 120_000);

afterAll(() => rmSync(outDir, { recursive: true, force: true }));

describe("client examples", () => {
  let service: TestService;
  let acme: string;
  let globex: string;
  let connectionId: string;
  let createdEtag: string;

  beforeAll(async () => {
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

/** A long-running example: its output as lines so far, and waits on them instead of on time. */
class RunningExample {
  readonly stdout: string[] = [];
  readonly stderr: string[] = [];
  readonly exited: Promise<number | null>;
  readonly #child: ChildProcessWithoutNullStreams;
  #changed: () => void = () => {};

  constructor(script: string, env: Record<string, string>) {
    this.#child = spawn(process.execPath, [script], { env: { ...process.env, ...env } });
    this.#collect(this.#child.stdout, this.stdout);
    this.#collect(this.#child.stderr, this.stderr);
    this.exited = new Promise((resolve) => this.#child.once("exit", (code) => resolve(code)));
    void this.exited.then(() => this.#changed());
  }

  #collect(stream: NodeJS.ReadableStream, lines: string[]): void {
    let partial = "";
    stream.on("data", (chunk: Buffer) => {
      const parts = (partial + chunk.toString()).split("\n");
      partial = parts.pop() ?? "";
      lines.push(...parts);
      this.#changed();
    });
  }

  /** Resolves once `condition` holds on the output; rejects if the process exits first. */
  async until(condition: () => boolean, what: string): Promise<void> {
    let exited = false;
    void this.exited.then(() => {
      exited = true;
    });
    while (!condition()) {
      if (exited) throw new Error(`exited before ${what}:\n${this.stderr.join("\n")}\n${this.stdout.join("\n")}`);
      await new Promise<void>((resolve) => {
        this.#changed = resolve;
      });
    }
  }

  stop(): Promise<number | null> {
    this.#child.kill("SIGTERM");
    return this.exited;
  }
}

describe("token service: following the change feed", () => {
  it("revokes share tokens on deactivation and narrowing, and resumes from its cursor across a restart without repeating or losing an event", {
    timeout: 180_000,
  }, async () => {
    const database = await provisionSqliteFile();
    const cursorPath = `${new URL(database.url.replace(/^sqlite:/, "file:")).pathname}.feed-cursor`;
    const port = await freePort();
    const env = { DATABASE_URL: database.url };
    let service: TestService | undefined = await startTestService(SQLITE, { ...env, PORT: String(port) });
    let follower: RunningExample | undefined;
    try {
      const clientOf = (running: TestService) => running.client("connect-grpc");
      // One Connection per pair of organizations: one source, a destination for each Connection.
      const [source = "", ...destinations] = await registerOrganizations(clientOf(service), 5);
      const gateway = (running: TestService) =>
        clientOf(running).as({ caller: "api-gateway", organizationId: source, actor: "user:admin" });
      const ids: string[] = [];
      for (const destination of destinations) {
        const { connection } = await gateway(service).createConnection({
          destinationOrganizationId: destination,
          scopes: ["account.read", "transaction.read"],
          name: `to ${destination}`,
        });
        ids.push(connection?.id ?? "");
        await clientOf(service)
          .as({ caller: "dashboard-bff", organizationId: destination, actor: "user:bob" })
          .activateConnection({ id: connection?.id ?? "" });
      }
      const [deactivated = "", narrowed = "", whileDown = "", afterRestart = ""] = ids;

      // First start: no cursor yet, so it follows from now; what happened before is not replayed.
      const running = new RunningExample(follow, {
        ADDR: service.baseUrl,
        CURSOR_FILE: cursorPath,
        MAX_BACKOFF_MS: "500",
      });
      follower = running;
      const revoked = () => running.stdout.filter((line) => line.startsWith("revoke "));
      const streams = () => running.stderr.filter((line) => line.startsWith("following the change feed"));
      await running.until(() => streams().length === 1, "the first stream");
      expect(streams()).toEqual(["following the change feed from now"]);

      await gateway(service).deactivateConnection({ id: deactivated, reason: "contract ended" });
      await gateway(service).updateConnection({
        connection: { id: narrowed, scopes: ["account.read"] },
        updateMask: { paths: ["scopes"] },
      });
      await running.until(() => revoked().length === 2, "two revocations");
      expect(revoked()[0]).toMatch(
        new RegExp(
          `^revoke share tokens for connection ${deactivated} \\(scopes account.read, transaction.read\\) after TYPE_DEACTIVATED `,
        ),
      );
      expect(revoked()[1]).toMatch(
        new RegExp(`^revoke share tokens for connection ${narrowed} \\(scopes transaction.read\\) after TYPE_UPDATED `),
      );

      // The service shuts down (ending the stream with UNAVAILABLE); while no replica serves the
      // follower's address, another one on the same database records an event.
      await service.close();
      service = undefined;
      await running.until(
        () => running.stderr.some((line) => line.startsWith("stream ended")),
        "the end of the stream",
      );
      // It resumes after the cursor it saved last (nothing writes the file while it is disconnected).
      const checkpoint = readFileSync(cursorPath, "utf8");
      expect(running.stderr.find((line) => line.startsWith("stream ended"))).toContain(
        `; resuming after ${checkpoint} in `,
      );
      const elsewhere = await startTestService(SQLITE, env);
      try {
        await gateway(elsewhere).deactivateConnection({ id: whileDown });
      } finally {
        await elsewhere.close();
      }

      // A new replica on the follower's address: it resumes after its cursor.
      service = await startTestService(SQLITE, { ...env, PORT: String(port) });
      await running.until(() => revoked().length === 3, "the revocation recorded while it was down");
      expect(streams()[1]).toBe(`following the change feed after ${checkpoint}`);
      await gateway(service).updateConnection({
        connection: { id: afterRestart, scopes: ["transaction.read"] },
        updateMask: { paths: ["scopes"] },
      });
      await running.until(() => revoked().length === 4, "the revocation after the restart");
      expect(await running.stop()).toBe(0);
      expect(running.stderr.at(-1)).toBe("stopped");

      // Each event exactly once, in commit order.
      const lines = revoked();
      expect(lines.map((line) => line.split(" ")[5])).toEqual([deactivated, narrowed, whileDown, afterRestart]);
      expect(lines[3]).toMatch(/\(scopes account\.read\) after TYPE_UPDATED /);
      expect(new Set(lines.map((line) => line.split(" ").at(-1))).size).toBe(4);
    } finally {
      await follower?.stop();
      await service?.close();
      await database.drop();
    }
  });
});
