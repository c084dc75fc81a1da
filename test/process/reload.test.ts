// The callers file and the TLS certificate reloaded in a real process, under load: rewritten
// again and again (sometimes with garbage, sometimes by rename, a certificate sometimes beside a
// key that does not match it yet), with real SIGHUPs, while loops of calls run. No call may fail;
// a new token works and a removed one stops working without a restart; new connections get the
// new certificate; a bad file is refused with a log line that names no secret, and the metrics
// say when the last reload succeeded and how many were refused.

import { mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import https from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { TLSSocket } from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sha256Hex } from "../../src/api/callers.js";
import { createTestPki, type TestPki } from "../support/certificates.js";
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
    let answered = 0;
    let stop = false;
    const worker = async () => {
      while (!stop) {
        await as(STEADY)
          .getOrganization({ id: organizationId })
          .catch((error: RpcError) => failures.push(error));
        answered++;
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
      // Calls answered after each rewrite, however slow the machine: counted, not timed.
      const after = answered + 8;
      while (answered < after) await sleep(5);
    }
    stop = true;
    await load;
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

describe("reloading the TLS certificate and key in a running process", () => {
  let pki: TestPki;
  let database: ProvisionedDatabase;
  let service: ServiceProcess;
  let certFile: string;
  let keyFile: string;

  /** A Connect JSON call on a new TLS connection: a fresh handshake with whatever context is in force. */
  const freshCall = (port: number) =>
    new Promise<{ status: number; commonName: string }>((resolve, reject) => {
      const request = https.request(
        {
          host: "127.0.0.1",
          port,
          method: "POST",
          path: "/connections.v1.OrganizationService/GetOrganization",
          ca: pki.ca.cert,
          // No SNI for an IP address (RFC 6066); the certificate's IP SAN is still checked.
          servername: "",
          agent: false,
          headers: { "content-type": "application/json", authorization: "Bearer dev-provisioning" },
        },
        (response) => {
          const commonName = String((response.socket as TLSSocket).getPeerCertificate().subject?.CN);
          response.resume();
          response.on("end", () => resolve({ status: response.statusCode ?? 0, commonName }));
        },
      );
      request.once("error", reject);
      request.end('{"id": "org_absent"}');
    });

  beforeAll(async () => {
    pki = createTestPki();
    const first = pki.issue("server-0", { ips: ["127.0.0.1"] });
    certFile = join(pki.directory, "tls.crt");
    keyFile = join(pki.directory, "tls.key");
    writeFileSync(certFile, first.cert);
    writeFileSync(keyFile, first.key);
    database = await provisionSqliteFile();
    service = await startServiceProcess({ DATABASE_URL: database.url, TLS_CERT_FILE: certFile, TLS_KEY_FILE: keyFile });
  }, 60_000);

  afterAll(async () => {
    await service?.stop();
    await database?.drop();
    pki?.remove();
  });

  it("fails no call, on open or new connections, while certificates rotate", { timeout: 120_000 }, async () => {
    const certificates = [1, 2, 3].map((index) => pki.issue(`server-${index}`, { ips: ["127.0.0.1"] }));
    const client = new GrpcJsRpcClient(`127.0.0.1:${service.port}`, grpc.credentials.createSsl(pki.ca.cert));
    const failures: string[] = [];
    let calls = 0;
    let stop = false;
    const openConnection = async () => {
      while (!stop && calls < 20_000) {
        calls++;
        await client
          .as({ caller: "provisioning" })
          .getOrganization({ id: "org_absent" })
          .catch((error: RpcError) => {
            if (error.reason !== "ORGANIZATION_NOT_FOUND") failures.push(`open: ${error.code} ${error.message}`);
          });
      }
    };
    const newConnections = async () => {
      while (!stop && calls < 20_000) {
        calls++;
        await freshCall(service.port).then(
          ({ status }) => {
            if (status !== 404) failures.push(`new: HTTP ${status}`);
          },
          (error: Error) => failures.push(`new: ${error.message}`),
        );
      }
    };
    const load = Promise.all([
      ...Array.from({ length: 4 }, openConnection),
      ...Array.from({ length: 2 }, newConnections),
    ]);
    for (let round = 0; round < 30; round++) {
      const next = certificates[round % certificates.length];
      if (next === undefined) continue;
      // Key first, then certificate: between the two the pair does not match, and a reload that
      // reads it then must be refused while the previous pair keeps serving.
      writeFileSync(`${keyFile}.tmp`, next.key);
      renameSync(`${keyFile}.tmp`, keyFile);
      writeFileSync(`${certFile}.tmp`, next.cert);
      renameSync(`${certFile}.tmp`, certFile);
      service.child.kill("SIGHUP");
      await sleep(30);
    }
    // Handshakes are slow on a loaded machine: let the load reach a useful count either way.
    for (let waited = 0; calls < 200 && waited < 200; waited++) await sleep(50);
    stop = true;
    await load;
    await client.close();
    expect(calls).toBeGreaterThan(100);
    expect(failures).toEqual([]);
    // The last pair written (round 29: server-3) is the one new connections are shown.
    let shown = "";
    for (let attempt = 0; attempt < 100 && shown !== "server-3"; attempt++) {
      shown = (await freshCall(service.port)).commonName;
      if (shown !== "server-3") await sleep(50);
    }
    expect(shown).toBe("server-3");
  });
});
