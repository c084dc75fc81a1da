// The servers under test: the service on SQLite and on PostgreSQL (seeded first, through the
// store), a @grpc/grpc-js no-op and the node:http2 ceiling, each in its own process; the callers
// file the services trust; and the CPU each server (and its PostgreSQL backends) uses over a window.

import { createHash, randomBytes } from "node:crypto";
import { copyFileSync, mkdirSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { config } from "./config.js";
import {
  buildService,
  type Child,
  endedChildrenCpuSeconds,
  machineCpuSeconds,
  onCleanUp,
  processCpuSeconds,
  startBenchServer,
  startService,
} from "./processes.js";
import { progress } from "./report.js";
import { type SeedReport, seedDatabase } from "./seed.js";
import { checkRequests, type RequestItem } from "./workload.js";

/** The PostgreSQL backends serving a database (they do part of the service's work). */
export type BackendPids = () => Promise<number[]>;

export interface Target {
  /** "ceiling", "grpc-js", "sqlite" or "postgres". */
  readonly name: string;
  readonly label: string;
  readonly server: Child & { readonly port: number };
  readonly url: string;
  /** Only the services. */
  readonly service?: {
    readonly seed: SeedReport;
    readonly checks: readonly RequestItem[];
    readonly logPath: string;
    readonly profileDir: string | undefined;
    readonly backends: BackendPids | undefined;
  };
}

export interface Credentials {
  readonly path: string;
  readonly tokenService: Record<string, string>;
  readonly apiGateway: Record<string, string>;
  readonly dashboard: Record<string, string>;
}

/** A production callers file for `callers`: sha256 digests of fresh random tokens, never the dev tokens. */
export function writeProductionCallers<C extends string>(
  workDir: string,
  fileName: string,
  callers: readonly C[],
): { path: string; tokens: Record<C, string> } {
  const tokens = Object.fromEntries(callers.map((caller) => [caller, randomBytes(32).toString("base64url")])) as Record<
    C,
    string
  >;
  const digests = Object.fromEntries(
    callers.map((caller) => [caller, [`sha256:${createHash("sha256").update(tokens[caller]).digest("hex")}`]]),
  );
  // A directory of its own, as deployed: the service watches the file's directory, and the logs and
  // databases the bench writes into workDir would wake every service on each line and each write.
  const directory = join(workDir, "callers");
  mkdirSync(directory, { recursive: true });
  const path = join(directory, fileName);
  writeFileSync(path, JSON.stringify(digests), { mode: 0o600 });
  return { path, tokens };
}

/** The callers file of the check and overload runs, and each caller's headers. */
export function writeCallersFile(workDir: string): Credentials {
  const { path, tokens } = writeProductionCallers(workDir, "callers.json", [
    "token-service",
    "api-gateway",
    "dashboard-bff",
  ] as const);
  return {
    path,
    tokenService: { authorization: `Bearer ${tokens["token-service"]}` },
    apiGateway: { authorization: `Bearer ${tokens["api-gateway"]}`, "x-actor": "api-key:api_bench" },
    dashboard: { authorization: `Bearer ${tokens["dashboard-bff"]}`, "x-actor": "user:bench" },
  };
}

async function startServiceTarget(
  workDir: string,
  name: string,
  databaseUrl: string,
  seed: SeedReport,
  credentials: Credentials,
  backends: BackendPids | undefined,
  root?: string,
): Promise<Target> {
  const profileDir = config.cpuProfileDir === undefined ? undefined : join(config.cpuProfileDir, name);
  if (profileDir !== undefined) mkdirSync(profileDir, { recursive: true });
  const logPath = join(workDir, `service-${name}.log`);
  const server = await startService({
    databaseUrl,
    logLevel: config.logLevel,
    callersFile: credentials.path,
    logPath,
    cpuProfileDir: profileDir,
    ...(root === undefined ? {} : { root }),
  });
  const checks = checkRequests(seed.dataset, config.checkPool, config.randomSeed + 2);
  return {
    name,
    label:
      name === "compare"
        ? "service, SQLite (BENCH_COMPARE_ROOT)"
        : `service, ${name === "sqlite" ? "SQLite" : "PostgreSQL"}`,
    server,
    url: `http://127.0.0.1:${server.port}`,
    service: { seed, checks, logPath, profileDir, backends },
  };
}

export async function startTargets(workDir: string, credentials: Credentials): Promise<Target[]> {
  const targets: Target[] = [];
  if (config.targets.has("ceiling")) {
    const server = await startBenchServer("ceiling server", "bench/ceiling-server.ts");
    targets.push({ name: "ceiling", label: "node:http2 fixed frame", server, url: `http://127.0.0.1:${server.port}` });
  }
  if (config.targets.has("grpc-js")) {
    const server = await startBenchServer("grpc-js server", "bench/baseline-server.ts");
    targets.push({ name: "grpc-js", label: "@grpc/grpc-js no-op", server, url: `http://127.0.0.1:${server.port}` });
  }
  // Both databases are seeded at once: the SQLite work runs here, PostgreSQL's mostly in its server.
  const sqliteUrl = `sqlite:${join(workDir, "bench.db")}`;
  const sqliteSeed = config.targets.has("sqlite") ? seed("sqlite", sqliteUrl) : undefined;
  let postgres: Promise<{ url: string; backends: BackendPids; report: SeedReport }> | undefined;
  if (config.targets.has("postgres")) {
    if (config.postgresAdminUrl === undefined) {
      progress("postgres: skipped (set BENCH_DATABASE_URL, e.g. postgres://postgres@127.0.0.1:5432/test)");
    } else {
      postgres = createPostgresDatabase(config.postgresAdminUrl).then(async ({ url, backends }) => ({
        url,
        backends,
        report: await seed("postgres", url),
      }));
    }
  }
  const [sqliteReport, postgresSeeded] = await Promise.all([sqliteSeed, postgres]);
  if (sqliteReport !== undefined || postgresSeeded !== undefined) {
    progress("building the service (npm run build), to run it as npm start does");
    buildService();
    if (config.compareRoot !== undefined && sqliteReport !== undefined) buildService(config.compareRoot);
  }
  if (sqliteReport !== undefined) {
    if (config.compareRoot !== undefined) {
      const copy = join(workDir, "bench-compare.db");
      copyFileSync(join(workDir, "bench.db"), copy);
      progress(`compare: starting the service of ${config.compareRoot} on a copy of the SQLite data set`);
      targets.push(
        await startServiceTarget(
          workDir,
          "compare",
          `sqlite:${copy}`,
          sqliteReport,
          credentials,
          undefined,
          config.compareRoot,
        ),
      );
    }
    progress("sqlite: starting the service");
    targets.push(await startServiceTarget(workDir, "sqlite", sqliteUrl, sqliteReport, credentials, undefined));
  }
  if (postgresSeeded !== undefined) {
    progress("postgres: starting the service");
    const { url, backends, report } = postgresSeeded;
    targets.push(await startServiceTarget(workDir, "postgres", url, report, credentials, backends));
  }
  return targets;
}

async function seed(name: string, databaseUrl: string): Promise<SeedReport> {
  progress(
    `${name}: seeding ${config.connections.toLocaleString("en-US")} connections ` +
      `(${config.bigOrganizationConnections.toLocaleString("en-US")} of them the big organization's) through the store`,
  );
  const report = await seedDatabase(
    databaseUrl,
    {
      organizations: config.organizations,
      connections: config.connections,
      bigOrganizationConnections: config.bigOrganizationConnections,
      concurrency: config.seedConcurrency,
      randomSeed: config.randomSeed,
    },
    progress,
  );
  progress(`  seeded in ${report.seconds.toFixed(1)} s`);
  return report;
}

/** A new PostgreSQL database for this run (dropped at clean-up), and how to find its backends. */
async function createPostgresDatabase(adminUrl: string): Promise<{ url: string; backends: BackendPids }> {
  const name = `connections_bench_${randomBytes(6).toString("hex")}`;
  const admin = async (statement: string, parameters: unknown[] = []) => {
    const client = new pg.Client({ connectionString: adminUrl });
    await client.connect();
    try {
      return (await client.query(statement, parameters)).rows as Record<string, unknown>[];
    } finally {
      await client.end();
    }
  };
  await admin(`CREATE DATABASE ${name}`);
  onCleanUp(`database ${name}`, async () => {
    await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  });
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  const backends = async () =>
    (await admin("select pid from pg_stat_activity where datname = $1", [name])).map((row) => Number(row.pid));
  return { url: url.toString(), backends };
}

// CPU over a measured window: the server, its PostgreSQL backends, the whole machine.

export interface CpuFigures {
  /** CPU seconds the server used over the window. */
  readonly serverSeconds: number;
  /** In % of one core. */
  readonly server: number;
  /** The client, when it is a child process that ended inside the window (h2load). */
  readonly client: number;
  readonly database: number | undefined;
  readonly machine: number;
}

export function cpuWindow(target: Target): { end(): Promise<CpuFigures> } {
  const started = performance.now();
  const serverAtStart = processCpuSeconds(target.server.pid);
  const childrenAtStart = endedChildrenCpuSeconds();
  const machineAtStart = machineCpuSeconds();
  const backendsAtStart = target.service?.backends?.().then(
    (pids) => new Map(pids.map((pid) => [pid, processCpuSeconds(pid)])),
    () => undefined,
  );
  return {
    async end() {
      const seconds = (performance.now() - started) / 1000;
      const serverSeconds = processCpuSeconds(target.server.pid) - serverAtStart;
      const server = (serverSeconds / seconds) * 100;
      const client = ((endedChildrenCpuSeconds() - childrenAtStart) / seconds) * 100;
      const machineNow = machineCpuSeconds();
      const machine =
        ((machineNow.busy - machineAtStart.busy) / (machineNow.total - machineAtStart.total)) * cpus().length * 100;
      let database: number | undefined;
      const before = await backendsAtStart;
      if (before !== undefined) {
        let used = 0;
        for (const [pid, cpu] of before) {
          try {
            used += Math.max(0, processCpuSeconds(pid) - cpu);
          } catch {
            // The backend went away during the window.
          }
        }
        database = (used / seconds) * 100;
      }
      return { serverSeconds, server, client, database, machine };
    },
  };
}
