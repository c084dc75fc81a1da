// The callers file reloaded in a real process, under load: rewritten again and again (sometimes
// with garbage, sometimes by rename), with real SIGHUPs, while a loop of calls runs with a token
// that every version keeps. No call may fail; a new token works and a removed one stops working
// without a restart; a bad file is refused with a log line that names no secret, and the
// metrics say when the last reload succeeded and how many were refused.

import { mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sha256Hex } from "../../src/api/callers.js";
import { type ProvisionedDatabase, provisionSqliteFile } from "../support/databases.js";
import { type ServiceProcess, startServiceProcess } from "../support/process.js";
import { Code, expectRpcError, GrpcJsRpcClient, type RpcError, uniqueId } from "../support/service.js";

const STEADY = "steady-token-in-every-version";
const OLD = "old-token-removed-later";
const NEW = "new-token-added-later";
const GARBAGE = '{"provisioning": ["sha256:not-hex-and-maybe-a-pasted-secret"]}';

function callers(...tokens: string[]): string {
  return JSON.stringify({ provisioning: tokens.map((token) => `sha256:${sha256Hex(token)}`) });
}

describe("reloading the callers file in a running process", () => {
  let scratch: string;
  let database: ProvisionedDatabase;
  let service: ServiceProcess;
  let client: GrpcJsRpcClient;
  let file: string;
  let organizationId: string;

  /** Replaces the file the way Kubernetes and editors do: write aside, rename over. */
  const replace = (text: string) => {
    writeFileSync(`${file}.tmp`, text);
    renameSync(`${file}.tmp`, file);
  };
  const as = (token: string) => client.as({ authorization: `Bearer ${token}` });
  const metric = async (name: string) => {
    const text = await (await fetch(`http://127.0.0.1:${service.adminPort}/metrics`)).text();
    return Number(new RegExp(`^${name}\\{source="callers"\\} (\\S+)$`, "m").exec(text)?.[1]);
  };
  const eventually = async (what: string, condition: () => Promise<boolean>) => {
    for (let attempt = 0; attempt < 300; attempt++) {
      if (await condition()) return;
      await sleep(50);
    }
    throw new Error(`timed out waiting until ${what}`);
  };
  const works = (token: string) =>
    as(token)
      .getOrganization({ id: organizationId })
      .then(
        () => true,
        () => false,
      );

  beforeAll(async () => {
    scratch = mkdtempSync(join(tmpdir(), "connections-callers-"));
    file = join(scratch, "callers.json");
    writeFileSync(file, callers(STEADY, OLD));
    database = await provisionSqliteFile();
    service = await startServiceProcess({ DATABASE_URL: database.url, ADMIN_PORT: "0", CALLERS_FILE: file });
    client = new GrpcJsRpcClient(`127.0.0.1:${service.port}`);
    organizationId = uniqueId("org");
    await as(STEADY).createOrganization({ id: organizationId, name: "Reloaded" });
  }, 60_000);

  afterAll(async () => {
    await client?.close();
    await service?.stop();
    await database?.drop();
    if (scratch !== undefined) rmSync(scratch, { recursive: true, force: true });
  });

  it("fails no call while the file is rewritten and SIGHUP arrives, over and over", { timeout: 120_000 }, async () => {
    const failures: RpcError[] = [];
    let calls = 0;
    let stop = false;
    const worker = async () => {
      while (!stop && calls < 20_000) {
        calls++;
        await as(STEADY)
          .getOrganization({ id: organizationId })
          .catch((error: RpcError) => failures.push(error));
      }
    };
    const load = Promise.all(Array.from({ length: 8 }, worker));
    const versions = [callers(STEADY, OLD), callers(STEADY, NEW), "{ not json", GARBAGE, callers(STEADY, OLD, NEW)];
    for (let round = 0; round < 40; round++) {
      const text = versions[round % versions.length] ?? "";
      // Half in place (a reader may see it half-written), half by rename.
      if (round % 2 === 0) writeFileSync(file, text);
      else replace(text);
      service.child.kill("SIGHUP");
      await sleep(25);
    }
    stop = true;
    await load;
    expect(calls).toBeGreaterThan(100);
    expect(failures.map((error) => `${error.code} ${error.reason}`)).toEqual([]);
  });

  it("takes a changed file without a signal: a new token works, a removed one stops", async () => {
    // The load test left a file that lists OLD and NEW; this one drops OLD.
    expect(await works(OLD)).toBe(true);
    replace(callers(STEADY, NEW));
    await eventually("the removed token is refused", async () => !(await works(OLD)));
    await expectRpcError(
      as(OLD).getOrganization({ id: organizationId }),
      Code.Unauthenticated,
      "CALLER_UNAUTHENTICATED",
    );
    expect(await works(NEW)).toBe(true);
    expect(await metric("connections_config_reload_last_success_timestamp_seconds")).toBeGreaterThan(
      Date.now() / 1000 - 60,
    );
  });

  it("refuses a bad file, keeps the previous table, logs why without the contents, and counts it", async () => {
    const refusedBefore = await metric("connections_config_reload_failures_total");
    const logsBefore = service.logs.length;
    replace(GARBAGE);
    service.child.kill("SIGHUP");
    await eventually(
      "the refusal is counted",
      async () => (await metric("connections_config_reload_failures_total")) > refusedBefore,
    );
    expect(await works(NEW)).toBe(true);
    const refusals = service.logs
      .slice(logsBefore)
      .filter((line) => line.msg === "configuration reload refused; the previous configuration stays in force");
    expect(refusals.length).toBeGreaterThan(0);
    expect(refusals[0]).toMatchObject({ level: 50, source: "callers", trigger: expect.any(String) });
    expect(String(refusals[0]?.error)).toContain(file);

    replace(callers(STEADY, OLD));
    service.child.kill("SIGHUP");
    await eventually("the SIGHUP reload is logged", async () =>
      service.logs.some((line) => line.msg === "configuration reloaded" && line.trigger === "SIGHUP"),
    );
    await eventually("the old token works again", () => works(OLD));

    const everything = JSON.stringify(service.logs);
    for (const secret of [STEADY, OLD, NEW, "maybe-a-pasted-secret"]) expect(everything).not.toContain(secret);
  });
});
