// The Prometheus endpoint on the admin port of a real process, scraped after some calls.

import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ProvisionedDatabase, provisionSqliteFile } from "../support/databases.js";
import { type ServiceProcess, startServiceProcess } from "../support/process.js";
import { GrpcJsRpcClient, rpcError, uniqueId } from "../support/service.js";

const promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"].find((path) => existsSync(path));
if (promtool === undefined) console.info("promtool checks skipped: apt-get install prometheus brings promtool");

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
    // Refused at the port: a method this server does not have.
    const unknown = client.unary("/connections.v1.OrganizationService/Nope", Buffer.from, Buffer.from, "", {});
    expect((await rpcError(unknown)).reason).toBe("UNKNOWN_METHOD");

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
    expect(series("connections_port_refusals_total", 'reason="unknown_method"')).toBe(1);
    expect(series("connections_port_refusals_total", 'reason="body_too_slow"')).toBe(0);
    expect(text).toMatch(/^connections_db_pool_connections \d+$/m);
    expect(text).toMatch(/^connections_build_info\{version="\d+\.\d+\.\d+",nodejs="v\d+[.\d]*"\} 1$/m);
    expect(text).toMatch(/^connections_check_cache_(hits|misses|evictions)_total \d+$/m);
    expect(text).toMatch(/^connections_feed_poll_fallbacks_total \d+$/m);
    expect(text).toMatch(/^connections_feed_lag_seconds \S+$/m);
    expect(text).toMatch(/^process_resident_memory_bytes \d+/m);

    expect((await fetch(`http://127.0.0.1:${service.adminPort}/other`)).status).toBe(404);
  });

  // promtool comes with Debian's prometheus package; prom-client's own nodejs_* series are not ours.
  it.skipIf(promtool === undefined)("passes promtool check metrics for every connections_ series", async () => {
    const text = await (await fetch(`http://127.0.0.1:${service.adminPort}/metrics`)).text();
    const checked = spawnSync(promtool as string, ["check", "metrics"], { input: text, encoding: "utf8" });
    const problems = `${checked.stdout}${checked.stderr}`.split("\n").filter((line) => line.trim() !== "");
    expect(problems.filter((line) => !line.startsWith("nodejs_"))).toEqual([]);
  });
});
