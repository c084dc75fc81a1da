// PostgreSQL going away under a running service: RPCs must fail fast with UNAVAILABLE (not hang,
// not INTERNAL), and the service must recover by itself once the database is back.

import { afterAll, beforeAll, expect, it } from "vitest";
import { describePostgres, type ProvisionedDatabase, provisionPostgres } from "../support/databases.js";
import { type ServiceProcess, startServiceProcess } from "../support/process.js";
import { Code, GrpcJsRpcClient, rpcError, uniqueId } from "../support/service.js";
import { TcpProxy } from "../support/tcp-proxy.js";

/** A service process whose PostgreSQL is reached through a TcpProxy, set up around a describe block. */
function serviceBehindProxy(env: Record<string, string> = {}) {
  const setup = {} as {
    database: ProvisionedDatabase;
    proxy: TcpProxy;
    service: ServiceProcess;
    client: GrpcJsRpcClient;
  };
  beforeAll(async () => {
    setup.database = await provisionPostgres();
    const target = new URL(setup.database.url);
    setup.proxy = new TcpProxy(target.hostname, Number(target.port || 5432));
    await setup.proxy.start();
    target.host = `127.0.0.1:${setup.proxy.port}`;
    setup.service = await startServiceProcess({ DATABASE_URL: target.toString(), ...env });
    setup.client = new GrpcJsRpcClient(`127.0.0.1:${setup.service.port}`);
  }, 60_000);
  afterAll(async () => {
    setup.proxy?.thaw();
    await setup.client?.close();
    await setup.service?.stop();
    await setup.proxy?.cut();
    await setup.database?.drop();
  });
  return setup;
}

/** True once `read` succeeds again, trying for up to 20 s. */
async function recovers(read: () => Promise<unknown>): Promise<boolean> {
  for (let attempt = 0; attempt < 100; attempt++) {
    if (
      await read().then(
        () => true,
        () => false,
      )
    )
      return true;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return false;
}

describePostgres("PostgreSQL outage", () => {
  const setup = serviceBehindProxy();

  it("fails fast with UNAVAILABLE while the database is down and recovers by itself", async () => {
    const id = uniqueId("org");
    const provisioning = setup.client.as({ caller: "provisioning" });
    await provisioning.createOrganization({ id, name: "Before the outage" });

    await setup.proxy.cut();
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

    await setup.proxy.start();
    expect(await recovers(() => provisioning.getOrganization({ id }))).toBe(true);
    expect(setup.service.child.exitCode).toBeNull();
  });
});

describePostgres("PostgreSQL that stops answering (frozen, no reset)", () => {
  // statement_timeout 1 s, so the client gives up on a query after 2 s.
  const setup = serviceBehindProxy({ DATABASE_STATEMENT_TIMEOUT_MS: "1000", DATABASE_POOL_SIZE: "4" });

  it("fails calls with UNAVAILABLE well before MAX_DEADLINE_MS, frees the pool, and recovers by itself", async () => {
    const id = uniqueId("org");
    const provisioning = setup.client.as({ caller: "provisioning" });
    await provisioning.createOrganization({ id, name: "Before the freeze" });

    setup.proxy.freeze();
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

    setup.proxy.thaw();
    expect(await recovers(() => provisioning.getOrganization({ id }))).toBe(true);
    expect(setup.service.child.exitCode).toBeNull();
  }, 120_000);
});
