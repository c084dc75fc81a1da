// The container image: the HEALTHCHECK script against a real service (always); the service on the
// allocator the image preloads, with the Dockerfile's own settings (when libjemalloc2 is installed
// here: .ci/run installs it); and, when a container engine answers here, the image built from the
// Dockerfile, run, found healthy over grpc.health.v1, and stopped with SIGTERM into exit code 0.

import { execFile, execFileSync, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";
import { imageAllocatorEnv, jemallocLoaded } from "../../bench/allocator.js";
import {
  CheckConnectionRequest_Action,
  CheckConnectionResponse_Reason,
} from "../../gen/connections/v1/connection_service_pb.js";
import { createTestPki } from "../support/certificates.js";
import { connectionFixture } from "../support/fixtures.js";
import { BUILT_HEALTHCHECK, type ServiceProcess, startServiceProcess } from "../support/process.js";
import { GrpcJsRpcClient } from "../support/service.js";

const ROOT = new URL("../..", import.meta.url).pathname;
const run = promisify(execFile);

function healthcheck(env: Record<string, string>): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BUILT_HEALTHCHECK], {
      cwd: ROOT,
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "inherit"],
    });
    let output = "";
    child.stdout.on("data", (chunk: Buffer) => {
      output += chunk.toString();
    });
    child.once("exit", (code) => resolve({ code, output }));
  });
}

describe("HEALTHCHECK script (dist/src/bin/healthcheck.js)", () => {
  let service: ServiceProcess | undefined;
  afterAll(async () => {
    await service?.stop();
  });

  it("exits 0 while the service is SERVING and 1 when nothing answers", async () => {
    service = await startServiceProcess({ DATABASE_URL: "sqlite::memory:" });
    const serving = await healthcheck({ HOST: "127.0.0.1", PORT: String(service.port) });
    expect(serving).toEqual({ code: 0, output: `http://127.0.0.1:${service.port}: SERVING\n` });
    const port = service.port;
    await service.stop();
    service = undefined;
    const down = await healthcheck({ HOST: "0.0.0.0", PORT: String(port) });
    expect(down.code).toBe(1);
    expect(down.output).toMatch(/ECONNREFUSED/);
  });

  it("asks over TLS when the port serves TLS, presenting the service's certificate under mTLS", async () => {
    const pki = createTestPki();
    try {
      const server = pki.issue("server", { dns: ["localhost"], ips: ["127.0.0.1"] });
      const tls = { TLS_CERT_FILE: server.certFile, TLS_KEY_FILE: server.keyFile, TLS_CLIENT_CA_FILE: pki.ca.certFile };
      service = await startServiceProcess({ DATABASE_URL: "sqlite::memory:", ...tls });
      const serving = await healthcheck({ HOST: "127.0.0.1", PORT: String(service.port), ...tls });
      expect(serving).toEqual({ code: 0, output: `https://127.0.0.1:${service.port}: SERVING\n` });
      // Without the TLS settings the script speaks h2c, which a TLS-only port refuses.
      const cleartext = await healthcheck({ HOST: "127.0.0.1", PORT: String(service.port) });
      expect(cleartext.code).toBe(1);
    } finally {
      await service?.stop();
      service = undefined;
      pki.remove();
    }
  });
});

const allocatorEnv = imageAllocatorEnv();
/**
 * Whether any jemalloc is installed here, whatever the Dockerfile names: a name in LD_PRELOAD that no
 * installed library has fails below instead of skipping.
 */
const allocatorInstalled = execFileSync("/sbin/ldconfig", ["-p"], { encoding: "utf8" }).includes("libjemalloc.so");
if (!allocatorInstalled)
  console.warn("allocator test skipped: jemalloc is not installed (apt-get install libjemalloc2)");

describe.skipIf(!allocatorInstalled)(
  "the image's allocator: jemalloc, preloaded with the Dockerfile's settings",
  () => {
    it("is loaded, and takes every MALLOC_CONF setting without a warning", () => {
      expect(jemallocLoaded(allocatorEnv)).toBe(true);
      // jemalloc ignores a setting it does not know, saying so only on stderr.
      const probe = spawnSync(process.execPath, ["-e", "0"], {
        env: { ...process.env, ...allocatorEnv },
        encoding: "utf8",
      });
      expect(probe.status).toBe(0);
      expect(probe.stderr).toBe("");
    });

    it("runs the service with jemalloc mapped: writes, checks, and a drain that exits 0", async () => {
      const directory = mkdtempSync(join(tmpdir(), "connections-jemalloc-"));
      const service = await startServiceProcess({ DATABASE_URL: `sqlite:${join(directory, "c.db")}`, ...allocatorEnv });
      const client = new GrpcJsRpcClient(`127.0.0.1:${service.port}`);
      try {
        expect(readFileSync(`/proc/${service.child.pid}/maps`, "utf8")).toContain("libjemalloc");
        const { source, connection } = await connectionFixture(client, { state: "ACTIVE", scopes: ["account.read"] });
        const check = await client.as({ caller: "token-service" }).checkConnection({
          connectionId: connection.id,
          organizationId: source,
          action: CheckConnectionRequest_Action.ISSUE_SHARE_TOKEN,
          scope: "account.read",
        });
        expect(check.reason).toBe(CheckConnectionResponse_Reason.ALLOWED);
      } finally {
        client.close();
        const code = await service.stop("SIGTERM");
        rmSync(directory, { recursive: true, force: true });
        expect(code).toBe(0);
      }
    });
  },
);

/** "docker" or "podman" when one is installed and its daemon/runtime answers, else undefined. */
function containerEngine(): string | undefined {
  for (const engine of ["docker", "podman"]) {
    try {
      execFileSync(engine, ["info"], { stdio: "ignore", timeout: 10_000 });
      return engine;
    } catch {}
  }
  return undefined;
}

const engine = containerEngine();
if (engine === undefined) {
  console.warn("container image test skipped: neither docker nor podman is installed and answering here");
}

describe.skipIf(engine === undefined)(`container image (${engine})`, () => {
  const tag = `connections-test:${process.pid}`;
  let container: string | undefined;
  afterAll(async () => {
    if (container !== undefined) await run(engine as string, ["rm", "-f", container]).catch(() => {});
    await run(engine as string, ["rmi", "-f", tag]).catch(() => {});
  });

  it("builds, turns healthy over grpc.health.v1, and exits 0 on SIGTERM", async () => {
    const docker = engine as string;
    await run(docker, ["build", "-t", tag, "."], { cwd: ROOT, maxBuffer: 64 * 1024 * 1024 });
    // Dev tokens: no callers file is mounted in this test.
    const started = await run(docker, ["run", "-d", "-e", "NODE_ENV=development", tag]);
    container = started.stdout.trim();
    let healthy = false;
    for (let attempt = 0; attempt < 60 && !healthy; attempt++) {
      healthy = await run(docker, ["exec", container, "node", "dist/src/bin/healthcheck.js"]).then(
        () => true,
        () => false,
      );
      if (!healthy) await new Promise((resolve) => setTimeout(resolve, 500));
    }
    expect(healthy).toBe(true);
    const user = await run(docker, ["exec", container, "id", "-u"]);
    expect(user.stdout.trim()).not.toBe("0");
    await run(docker, ["stop", "-t", "20", container]);
    const exit = await run(docker, ["inspect", "-f", "{{.State.ExitCode}}", container]);
    expect(exit.stdout.trim()).toBe("0");
  }, 900_000);
});
