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
