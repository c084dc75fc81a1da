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
    // Thunks, so each call starts only when awaited: a call started early could fail before
    // anything awaits it, an unhandled rejection.
    for (const work of [
      () => provisioning.getOrganization({ id }),
      () => provisioning.createOrganization({ id: uniqueId("org"), name: "During the outage" }),
    ]) {
      const error = await rpcError(work());
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
  // The default statement timeout (5 s, so the client's own clock gives up on a query after 6 s):
  // failing faster than that has to come from the replica noticing, not from a timeout.
  const setup = serviceBehindProxy({ DATABASE_POOL_SIZE: "4" });

  it("fails waiting calls within seconds, later ones at once, frees the pool, and recovers by itself", async () => {
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
    console.info(`frozen PostgreSQL: 12 calls in flight failed within ${Math.round(slowestMs)} ms (pool of 4)`);
    for (const { error } of outcomes) {
      expect({ code: Code[error.code], reason: error.reason }).toEqual({
        code: "Unavailable",
        reason: "DATABASE_UNAVAILABLE",
      });
    }
    // The replica says so (the line may reach the pipe a moment after the answers).
    expect(
      await recovers(async () => {
        if (!setup.service.logs.some((entry) => /PostgreSQL is unreachable/.test(String(entry.msg)))) throw new Error();
      }),
    ).toBe(true);
    // A generous bound (the aim is 3 s): well under the 6 s a query would wait on its own clock.
    expect(slowestMs).toBeLessThan(5_000);

    // Once the replica knows, a call fails at once instead of waiting for anything.
    const wave: { reason: string; ms: number }[] = [];
    for (let index = 0; index < 8; index++) {
      const began = performance.now();
      const work =
        index % 2 === 0
          ? provisioning.getOrganization({ id })
          : provisioning.createOrganization({ id: uniqueId("org"), name: "Known frozen" });
      const error = await rpcError(work);
      wave.push({ reason: error.reason, ms: performance.now() - began });
    }
    const laterMs = Math.max(...wave.map((call) => call.ms));
    console.info(`frozen PostgreSQL: calls after the replica noticed failed within ${Math.round(laterMs)} ms`);
    expect(wave.map((call) => call.reason)).toEqual(wave.map(() => "DATABASE_UNAVAILABLE"));
    // A generous bound (the aim is 100 ms): far from the connect (2 s) and query (6 s) timeouts.
    expect(laterMs).toBeLessThan(1_000);

    setup.proxy.thaw();
    expect(await recovers(() => provisioning.getOrganization({ id }))).toBe(true);
    expect(setup.service.child.exitCode).toBeNull();
  }, 120_000);
});
