// The CPU of a write without gRPC: the application's Connections on a store in this one process,
// creates (each with a request id, as the writes section sends them) and then activations of what
// was created, `STORE_WRITES_IN_FLIGHT` at a time, with this process's CPU time (process.cpuUsage)
// per call. Run under `valgrind --tool=callgrind` with two values of STORE_WRITES for instruction
// counts that the machine's load does not change (their difference over the difference of the
// counts is one create plus one activation).
//
//   BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test npx tsx bench/store-writes.ts
//   STORE_WRITES_DATABASE=sqlite npx tsx bench/store-writes.ts    (a new file in the temp directory)
//
// Prints figures; asserts nothing about time.

import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { Connections } from "../src/app/connections.js";
import { openStore } from "../src/store/open.js";
import { integer } from "./config.js";
import { adminStatement } from "./writes.js";

const onSqlite = process.env.STORE_WRITES_DATABASE === "sqlite";
const adminUrl = process.env.BENCH_DATABASE_URL || process.env.TEST_DATABASE_URL;
if (!onSqlite && adminUrl === undefined) {
  throw new Error("set BENCH_DATABASE_URL to a PostgreSQL server, or STORE_WRITES_DATABASE=sqlite");
}
const writes = integer("STORE_WRITES", 2000);
const warmUp = integer("STORE_WRITES_WARM_UP", 1000);
const inFlight = integer("STORE_WRITES_IN_FLIGHT", 64);
const ORGANIZATIONS = 200;

/** A new database for this run, and how to remove it afterwards. */
async function newDatabase(): Promise<{ databaseUrl: string; remove: () => Promise<void> }> {
  if (onSqlite) {
    const directory = mkdtempSync(join(tmpdir(), "connections-store-writes-"));
    return {
      databaseUrl: `sqlite:${join(directory, "writes.db")}`,
      remove: async () => rmSync(directory, { recursive: true, force: true }),
    };
  }
  const admin = (statement: string) => adminStatement(adminUrl as string, statement);
  const name = `connections_bench_store_${randomBytes(6).toString("hex")}`;
  await admin(`CREATE DATABASE ${name}`);
  const url = new URL(adminUrl as string);
  url.pathname = `/${name}`;
  return { databaseUrl: url.toString(), remove: () => admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) };
}

/** Runs `call` for indexes from..from+count-1, `inFlight` at a time; CPU microseconds per call. */
async function phase(from: number, count: number, call: (index: number) => Promise<void>) {
  const cpu = process.cpuUsage();
  const started = performance.now();
  let next = from;
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (next < from + count) await call(next++);
    }),
  );
  const used = process.cpuUsage(cpu);
  return {
    cpuUsPerCall: Math.round((used.user + used.system) / count),
    systemUsPerCall: Math.round(used.system / count),
    perSecond: Math.round(count / ((performance.now() - started) / 1000)),
  };
}

const database = await newDatabase();
const store = await openStore({ databaseUrl: database.databaseUrl });
try {
  const connections = new Connections(store);
  const organizations = Array.from({ length: ORGANIZATIONS }, (_, index) => `org_s${index}`);
  for (const id of organizations) await store.createOrganization({ id, name: id, createTime: new Date() });
  const pairs = organizations.flatMap((source) =>
    organizations.filter((destination) => destination !== source).map((destination) => ({ source, destination })),
  );
  if (warmUp + writes > pairs.length) throw new Error(`at most ${pairs.length - warmUp} writes`);
  const actor = (organizationId: string) => ({ organizationId, caller: "bench", actor: "", requestId: "" });
  const ids: string[] = [];
  const create = async (index: number) => {
    const { source, destination } = pairs[index] as { source: string; destination: string };
    const requestId = `w-${source}-${destination}`;
    const input = { destinationOrganizationId: destination, scopes: ["account.read"], name: "Bench", requestId };
    ids[index] = (await connections.create(actor(source), input)).id;
  };
  await phase(0, warmUp, create);
  const creates = await phase(warmUp, writes, create);
  const activations = await phase(warmUp, writes, async (index) => {
    const { destination } = pairs[index] as { destination: string };
    await connections.transition(actor(destination), ids[index] as string, "ACTIVATE", { etag: "", reason: "" });
  });
  console.log(
    JSON.stringify({ writes, inFlight, loadAverage: loadavg()[0]?.toFixed(1), creates, activations }, undefined, 1),
  );
} finally {
  await store.close();
  await database.remove();
}
