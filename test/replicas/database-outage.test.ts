// PostgreSQL going away under a running service: RPCs must fail fast with UNAVAILABLE (not hang,
// not INTERNAL), and the service must recover by itself once the database is back.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  POSTGRES_SKIP_MESSAGE,
  type ProvisionedDatabase,
  postgresAdminUrl,
  provisionPostgres,
} from "../support/databases.js";
import { type ServiceProcess, startServiceProcess } from "../support/process.js";
import { Code, GrpcJsRpcClient, rpcError, uniqueId } from "../support/service.js";
import { TcpProxy } from "../support/tcp-proxy.js";

if (postgresAdminUrl === undefined) console.warn(POSTGRES_SKIP_MESSAGE);

describe.skipIf(postgresAdminUrl === undefined)("PostgreSQL outage", () => {
  let database: ProvisionedDatabase;
  let proxy: TcpProxy;
  let service: ServiceProcess;
  let client: GrpcJsRpcClient;

  beforeAll(async () => {
    database = await provisionPostgres();
    const target = new URL(database.url);
    proxy = new TcpProxy(target.hostname, Number(target.port || 5432));
    await proxy.start();
    target.host = `127.0.0.1:${proxy.port}`;
    service = await startServiceProcess({ DATABASE_URL: target.toString() });
    client = new GrpcJsRpcClient(`127.0.0.1:${service.port}`);
  }, 60_000);

  afterAll(async () => {
    await client?.close();
    await service?.stop();
    await proxy?.cut();
    await database?.drop();
  });

  it("fails fast with UNAVAILABLE while the database is down and recovers by itself", async () => {
    const id = uniqueId("org");
    const provisioning = client.as({ caller: "provisioning" });
    await provisioning.createOrganization({ id, name: "Before the outage" });

    await proxy.cut();
    for (const work of [
      provisioning.getOrganization({ id }),
      provisioning.createOrganization({ id: uniqueId("org"), name: "During the outage" }),
    ]) {
      const error = await rpcError(work);
      expect({ code: Code[error.code], reason: error.reason }).toEqual({
        code: "Unavailable",
        reason: "DATABASE_UNAVAILABLE",
      });
      expect(error.rawMessage).not.toMatch(/ECONNREFUSED|pg|terminat/i);
    }

    await proxy.start();
    let recovered = false;
    for (let attempt = 0; attempt < 50 && !recovered; attempt++) {
      recovered = await provisioning.getOrganization({ id }).then(
        (reply) => reply.organization?.id === id,
        () => false,
      );
      if (!recovered) await new Promise((resolve) => setTimeout(resolve, 200));
    }
    expect(recovered).toBe(true);
    expect(service.child.exitCode).toBeNull();
  });
});

describe.skipIf(postgresAdminUrl === undefined)("PostgreSQL that stops answering (frozen, no reset)", () => {
  let database: ProvisionedDatabase;
  let proxy: TcpProxy;
  let service: ServiceProcess;
  let client: GrpcJsRpcClient;
  const statementTimeoutMs = 1_000;

  beforeAll(async () => {
    database = await provisionPostgres();
    const target = new URL(database.url);
    proxy = new TcpProxy(target.hostname, Number(target.port || 5432));
    await proxy.start();
    target.host = `127.0.0.1:${proxy.port}`;
    service = await startServiceProcess({
      DATABASE_URL: target.toString(),
      DATABASE_STATEMENT_TIMEOUT_MS: String(statementTimeoutMs),
      DATABASE_POOL_SIZE: "4",
    });
    client = new GrpcJsRpcClient(`127.0.0.1:${service.port}`);
  }, 60_000);

  afterAll(async () => {
    proxy?.thaw();
    await client?.close();
    await service?.stop();
    await proxy?.cut();
    await database?.drop();
  });

  it("fails calls with UNAVAILABLE well before MAX_DEADLINE_MS, frees the pool, and recovers by itself", async () => {
    const id = uniqueId("org");
    const provisioning = client.as({ caller: "provisioning" });
    await provisioning.createOrganization({ id, name: "Before the freeze" });

    proxy.freeze();
    const started = performance.now();
    // More calls than pooled connections: some wait for a connection that never frees by itself.
    const outcomes = await Promise.all(
      Array.from({ length: 12 }, (_, index) => {
        const work =
          index % 2 === 0
            ? provisioning.getOrganization({ id })
            : provisioning.createOrganization({ id: uniqueId("org"), name: "During the freeze" });
        return rpcError(work).then((error) => ({ error, ms: performance.now() - started }));
      }),
    );
    const slowestMs = Math.max(...outcomes.map((outcome) => outcome.ms));
    console.info(`frozen PostgreSQL: 12 calls failed within ${Math.round(slowestMs)} ms (pool of 4)`);
    for (const { error } of outcomes) {
      expect({ code: Code[error.code], reason: error.reason }).toEqual({
        code: "Unavailable",
        reason: "DATABASE_UNAVAILABLE",
      });
    }
    // MAX_DEADLINE_MS is 30 s: a frozen database must not hold calls anywhere near that long.
    expect(slowestMs).toBeLessThan(20_000);

    // A second wave still fails fast: the stuck connections left the pool instead of queueing it.
    const second = performance.now();
    const again = await rpcError(provisioning.getOrganization({ id }));
    expect(again.reason).toBe("DATABASE_UNAVAILABLE");
    console.info(`frozen PostgreSQL: a later call failed in ${Math.round(performance.now() - second)} ms`);

    proxy.thaw();
    let recovered = false;
    for (let attempt = 0; attempt < 100 && !recovered; attempt++) {
      recovered = await provisioning.getOrganization({ id }).then(
        (reply) => reply.organization?.id === id,
        () => false,
      );
      if (!recovered) await new Promise((resolve) => setTimeout(resolve, 200));
    }
    expect(recovered).toBe(true);
    expect(service.child.exitCode).toBeNull();
  }, 120_000);
});
