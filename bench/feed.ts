// `npm run bench:feed`: the change feed's figures for the README.
//   1. Delivery latency across replicas (PostgreSQL, two service processes): a transition made on
//      replica B, from its RPC's return to the event's arrival at a watcher on replica A.
//   2. Memory of idle watchers: the service's resident set before and after 1,000 open streams.
//   3. The write cost of the feed's order (PostgreSQL): event-appending transactions per second
//      from 16 concurrent writers.
// Needs BENCH_DATABASE_URL (or TEST_DATABASE_URL), a PostgreSQL server where it may create and
// drop a database; without one, only the memory figure (on SQLite) is measured.

import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import pg from "pg";
import {
  ConnectionService,
  type WatchConnectionEventsResponse,
  WatchConnectionEventsResponseSchema,
} from "../gen/connections/v1/connection_service_pb.js";
import { OrganizationService } from "../gen/connections/v1/organization_service_pb.js";
import { openStore } from "../src/store/open.js";
import { serverAllocator } from "./processes.js";

const ROOT = new URL("..", import.meta.url).pathname;
const adminUrl = process.env.BENCH_DATABASE_URL || process.env.TEST_DATABASE_URL;
const TRANSITIONS = Number(process.env.BENCH_FEED_TRANSITIONS ?? 300);
const IDLE_WATCHERS = 1000;
const STREAMS_PER_CHANNEL = 100;

interface Replica {
  readonly port: number;
  readonly child: ChildProcess;
  stop(): Promise<void>;
}

function startReplica(env: Record<string, string>): Promise<Replica> {
  const child = spawn(process.execPath, ["--import", "tsx", "src/main.ts"], {
    cwd: ROOT,
    env: { ...process.env, ...serverAllocator().env, PORT: "0", ADMIN_PORT: "off", LOG_LEVEL: "info", ...env },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  return new Promise((resolve, reject) => {
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).on("line", (line) => {
      const entry = JSON.parse(line) as { port?: number; msg?: string };
      if (typeof entry.port === "number" && entry.msg === "serving gRPC, gRPC-Web and Connect") {
        resolve({
          port: entry.port,
          child,
          stop: () => {
            child.kill("SIGTERM");
            return exited;
          },
        });
      }
    });
    exited.then(() => reject(new Error("replica exited before serving")));
  });
}

function metadata(caller: string, organizationId?: string): grpc.Metadata {
  const result = new grpc.Metadata();
  result.set("authorization", `Bearer dev-${caller}`);
  if (organizationId !== undefined) result.set("x-organization-id", organizationId);
  return result;
}

/** A unary call by method local name, on a grpc-js client. */
function unary(
  client: grpc.Client,
  service: typeof ConnectionService | typeof OrganizationService,
  name: string,
  request: object,
  meta: grpc.Metadata,
): Promise<Record<string, unknown>> {
  const method = service.methods.find((candidate) => candidate.localName === name);
  if (method === undefined) throw new Error(`no method ${name}`);
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(
      `/${service.typeName}/${method.name}`,
      (value: object) => Buffer.from(toBinary(method.input, create(method.input, value as never))),
      (bytes: Buffer) => fromBinary(method.output, bytes) as unknown as Record<string, unknown>,
      request,
      meta,
      (error, response) => (error ? reject(error) : resolve(response as Record<string, unknown>)),
    );
  });
}

function watch(client: grpc.Client, onMessage: (message: WatchConnectionEventsResponse) => void) {
  const method = ConnectionService.method.watchConnectionEvents;
  const call = client.makeServerStreamRequest(
    `/${ConnectionService.typeName}/${method.name}`,
    (value: object) => Buffer.from(toBinary(method.input, create(method.input, value as never))),
    (bytes: Buffer) => fromBinary(WatchConnectionEventsResponseSchema, bytes),
    { startAtNow: true },
    metadata("token-service"),
  );
  call.on("data", onMessage);
  call.on("error", () => {});
  return call;
}

function percentile(sorted: readonly number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}

async function withDatabase<T>(work: (url: string) => Promise<T>): Promise<T> {
  if (adminUrl === undefined) throw new Error("no PostgreSQL");
  const name = `connections_bench_feed_${randomBytes(4).toString("hex")}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  await admin.query(`create database ${name}`);
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  try {
    return await work(url.toString());
  } finally {
    await admin.query(`drop database if exists ${name} with (force)`);
    await admin.end();
  }
}

async function latencyAcrossReplicas(url: string): Promise<void> {
  const [a, b] = await Promise.all([startReplica({ DATABASE_URL: url }), startReplica({ DATABASE_URL: url })]);
  if (a === undefined || b === undefined) throw new Error("replicas did not start");
  const watcher = new grpc.Client(`127.0.0.1:${a.port}`, grpc.credentials.createInsecure());
  const writer = new grpc.Client(`127.0.0.1:${b.port}`, grpc.credentials.createInsecure());
  try {
    const [source, destination] = [
      `org_src_${randomBytes(4).toString("hex")}`,
      `org_dst_${randomBytes(4).toString("hex")}`,
    ];
    for (const id of [source, destination]) {
      await unary(writer, OrganizationService, "createOrganization", { id, name: id }, metadata("provisioning"));
    }
    const created = await unary(
      writer,
      ConnectionService,
      "createConnection",
      { destinationOrganizationId: destination, scopes: ["account.read"], name: "bench" },
      metadata("api-gateway", source),
    );
    const id = (created.connection as { id: string }).id;
    const arrivals: number[] = [];
    let started!: () => void;
    const ready = new Promise<void>((resolve) => {
      started = resolve;
    });
    let waiting: (() => void) | undefined;
    const call = watch(watcher, (message) => {
      started();
      for (const _ of message.events) arrivals.push(performance.now());
      waiting?.();
    });
    await ready;
    const latencies: number[] = [];
    for (let index = 0; index < TRANSITIONS; index++) {
      const rpc = index % 2 === 0 ? "deactivateConnection" : "reactivateConnection";
      await unary(writer, ConnectionService, rpc, { id }, metadata("api-gateway", source));
      const returned = performance.now();
      while (arrivals.length <= index) {
        await new Promise<void>((resolve) => {
          waiting = resolve;
        });
      }
      latencies.push(Math.max(0, (arrivals[index] as number) - returned));
    }
    call.cancel();
    latencies.sort((x, y) => x - y);
    console.log(
      `cross-replica delivery (PostgreSQL, ${TRANSITIONS} sequential transitions, RPC return on B -> event on A): ` +
        `p50 ${percentile(latencies, 50).toFixed(1)} ms, p99 ${percentile(latencies, 99).toFixed(1)} ms, ` +
        `max ${(latencies.at(-1) ?? 0).toFixed(1)} ms`,
    );
  } finally {
    watcher.close();
    writer.close();
    await Promise.all([a.stop(), b.stop()]);
  }
}

function rssKiB(pid: number): number {
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(match?.[1] ?? Number.NaN);
}

async function idleWatcherMemory(): Promise<void> {
  const directory = mkdtempSync(join(tmpdir(), "connections-bench-feed-"));
  const replica = await startReplica({ DATABASE_URL: `sqlite:${join(directory, "feed.db")}` });
  const pid = replica.child.pid as number;
  const clients: grpc.Client[] = [];
  try {
    // Warm up the stream path once, so the figure is the watchers' and not the first call's code.
    const warm = new grpc.Client(`127.0.0.1:${replica.port}`, grpc.credentials.createInsecure(), {
      "grpc.use_local_subchannel_pool": 1,
    });
    clients.push(warm);
    await new Promise<void>((resolve) => {
      const call = watch(warm, () => {
        call.cancel();
        resolve();
      });
    });
    await new Promise((resolve) => setTimeout(resolve, 2000));
    const before = rssKiB(pid);
    let opened = 0;
    const all = new Promise<void>((resolve) => {
      for (let channel = 0; channel < IDLE_WATCHERS / STREAMS_PER_CHANNEL; channel++) {
        const client = new grpc.Client(`127.0.0.1:${replica.port}`, grpc.credentials.createInsecure(), {
          "grpc.use_local_subchannel_pool": 1,
        });
        clients.push(client);
        for (let stream = 0; stream < STREAMS_PER_CHANNEL; stream++) {
          let counted = false;
          watch(client, () => {
            if (counted) return;
            counted = true;
            opened++;
            if (opened === IDLE_WATCHERS) resolve();
          });
        }
      }
    });
    await all;
    await new Promise((resolve) => setTimeout(resolve, 2000));
    const after = rssKiB(pid);
    console.log(
      `${IDLE_WATCHERS} idle watchers (SQLite, ${IDLE_WATCHERS / STREAMS_PER_CHANNEL} HTTP/2 connections): ` +
        `RSS ${(before / 1024).toFixed(1)} MiB -> ${(after / 1024).toFixed(1)} MiB, ` +
        `${((after - before) / IDLE_WATCHERS).toFixed(1)} KiB per watcher`,
    );
  } finally {
    for (const client of clients) client.close();
    await replica.stop();
    rmSync(directory, { recursive: true, force: true });
  }
}

async function positionWriteCost(url: string): Promise<void> {
  const store = await openStore({ databaseUrl: url });
  await store.close();
  const pool = new pg.Pool({ connectionString: url, max: 16 });
  try {
    await pool.query(
      `insert into organizations (id, name, create_time) values ('org_a', 'a', now()), ('org_b', 'b', now())`,
    );
    await pool.query(`insert into connections (id, source_organization_id, destination_organization_id, name, scopes,
      state, create_time, update_time, creator, create_request_id, version)
      values ('cxn_bench', 'org_a', 'org_b', 'bench', '[]', 'PENDING', now(), now(), '', '', 1)`);
    const run = async (label: string) => {
      const until = Date.now() + 5000;
      let done = 0;
      await Promise.all(
        Array.from({ length: 16 }, async () => {
          const client = await pool.connect();
          try {
            while (Date.now() < until) {
              await client.query("begin");
              await client.query(`insert into connection_events (id, connection_id, type, from_state, to_state,
                actor_organization_id, caller, actor, reason, request_id, create_time)
                values ('evt_' || md5(random()::text), 'cxn_bench', 'DEACTIVATED', 'ACTIVE', 'INACTIVE', 'org_a',
                'bench', '', '', '', now())`);
              await client.query("commit");
              done++;
            }
          } finally {
            client.release();
          }
        }),
      );
      console.log(`event-appending transactions, 16 concurrent writers, ${label}: ${Math.round(done / 5)}/s`);
    };
    // Each event records its transaction id; no lock is shared by the writers (migration 0005).
    await run("with the feed's transaction-id order");
  } finally {
    await pool.end();
  }
}

await idleWatcherMemory();
if (adminUrl === undefined) {
  console.log("PostgreSQL figures skipped: set BENCH_DATABASE_URL or TEST_DATABASE_URL");
} else {
  await withDatabase(latencyAcrossReplicas);
  await withDatabase(positionWriteCost);
}
