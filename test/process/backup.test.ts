// The online SQLite backup: SIGUSR2 makes the running service write a consistent copy of its
// database while writes go on, and a service started on that copy (restored as an operator would)
// has every write that returned before the signal.

import { copyFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { type ProvisionedDatabase, provisionSqliteFile } from "../support/databases.js";
import { type ServiceProcess, startServiceProcess } from "../support/process.js";
import { GrpcJsRpcClient, uniqueId } from "../support/service.js";

describe("online SQLite backup (SIGUSR2)", () => {
  let database: ProvisionedDatabase | undefined;
  const services: ServiceProcess[] = [];
  const clients: GrpcJsRpcClient[] = [];

  afterEach(async () => {
    for (const client of clients.splice(0)) await client.close();
    await Promise.all(services.splice(0).map((service) => service.stop()));
    await database?.drop();
  });

  async function start(url: string): Promise<GrpcJsRpcClient> {
    const service = await startServiceProcess({ DATABASE_URL: url });
    services.push(service);
    const client = new GrpcJsRpcClient(`127.0.0.1:${service.port}`);
    clients.push(client);
    return client;
  }

  it("writes a copy under load that a service starts on, with every write made before it", async () => {
    database = await provisionSqliteFile();
    const client = await start(database.url);
    const service = services[0] as ServiceProcess;
    const provisioning = client.as({ caller: "provisioning" });
    const before: string[] = [];
    for (let index = 0; index < 50; index++) {
      const id = uniqueId("org_backup");
      await provisioning.createOrganization({ id, name: id });
      before.push(id);
    }
    // Writes go on while the backup runs.
    let writing = true;
    const during = (async () => {
      while (writing) await provisioning.createOrganization({ id: uniqueId("org_during"), name: "during" });
    })();
    service.child.kill("SIGUSR2");
    let written: Record<string, unknown> | undefined;
    for (let attempt = 0; attempt < 100 && written === undefined; attempt++) {
      written = service.logs.find((entry) => entry.msg === "backup written" || entry.msg === "backup failed");
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    writing = false;
    await during;
    expect(written?.msg).toBe("backup written");
    expect(written?.bytes).toBeGreaterThan(0);
    const backupPath = String(written?.path);
    expect(backupPath).toContain(join("data", "backups", "connections-"));

    // Restore: stop the service, put the copy in place of a database file, start on it.
    await service.stop();
    const restored = join(backupPath, "..", "..", "restored.db");
    await copyFile(backupPath, restored);
    const again = (await start(`sqlite:${restored}`)).as({ caller: "provisioning" });
    for (const id of before) expect((await again.getOrganization({ id })).organization?.id).toBe(id);
  }, 90_000);
});
