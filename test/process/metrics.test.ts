// The Prometheus endpoint on the admin port of a real process, scraped after some calls.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ProvisionedDatabase, provisionSqliteFile } from "../support/databases.js";
import { type ServiceProcess, startServiceProcess } from "../support/process.js";
import { GrpcJsRpcClient, rpcError, uniqueId } from "../support/service.js";

describe("metrics on the admin port", () => {
  let database: ProvisionedDatabase;
  let service: ServiceProcess;
  let client: GrpcJsRpcClient;

  beforeAll(async () => {
    database = await provisionSqliteFile();
    service = await startServiceProcess({ DATABASE_URL: database.url, ADMIN_PORT: "0" });
    client = new GrpcJsRpcClient(`127.0.0.1:${service.port}`);
  }, 60_000);

  afterAll(async () => {
    await client?.close();
    await service?.stop();
    await database?.drop();
  });

  it("counts RPCs by service, method and code, times them, and shows the database pool", async () => {
    const provisioning = client.as({ caller: "provisioning" });
    const id = uniqueId("org");
    await provisioning.createOrganization({ id, name: "Metered" });
    await provisioning.getOrganization({ id });
    await provisioning.getOrganization({ id });
    await rpcError(provisioning.getOrganization({ id: uniqueId("org") }));

    expect(service.adminPort).toBeTypeOf("number");
    const response = await fetch(`http://127.0.0.1:${service.adminPort}/metrics`);
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toContain("text/plain");
    const text = await response.text();
    const series = (name: string, labels: string) =>
      Number(new RegExp(`^${name}\\{${labels}\\} (\\S+)$`, "m").exec(text)?.[1]);

    const organizationService = 'service="connections.v1.OrganizationService"';
    expect(series("connections_rpc_total", `${organizationService},method="CreateOrganization",code="OK"`)).toBe(1);
    expect(series("connections_rpc_total", `${organizationService},method="GetOrganization",code="OK"`)).toBe(2);
    expect(series("connections_rpc_total", `${organizationService},method="GetOrganization",code="NotFound"`)).toBe(1);
    expect(series("connections_rpc_duration_seconds_count", `${organizationService},method="GetOrganization"`)).toBe(3);
    expect(text).toMatch(/^connections_rpc_duration_seconds_bucket\{le="0.005",.*\} \d+$/m);
    expect(text).toMatch(/^connections_db_pool_total \d+$/m);
    expect(text).toMatch(/^process_resident_memory_bytes \d+/m);

    expect((await fetch(`http://127.0.0.1:${service.adminPort}/other`)).status).toBe(404);
  });
});
