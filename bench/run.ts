// `npm run bench`: the service against a no-op @grpc/grpc-js baseline, on SQLite and (when
// BENCH_DATABASE_URL or TEST_DATABASE_URL names a server) PostgreSQL, on a seeded data set.
// Prints figures; asserts nothing about time. Fails (exit 1) only when a request failed or an
// answer was wrong. Every process, file and database it made is removed at the end.

import { randomBytes } from "node:crypto";
import { mkdirSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { BATCH_CHECK_PATH, batchCheckRequests, verifyBatches } from "./batch-check.js";
import {
  type Child,
  cleanUp,
  machineCpuSeconds,
  onCleanUp,
  processCpuSeconds,
  runClient,
  startBaseline,
  startService,
  statusMiB,
} from "./processes.js";
import { summariseProfile } from "./profile.js";
import { type SeedReport, seedDatabase } from "./seed.js";
import {
  CHECK_PATH,
  CREATE_PATH,
  checkRequests,
  createRequests,
  LIST_PATH,
  type ListPlan,
  type ListResult,
  type LoadPlan,
  type LoadResult,
  type RequestItem,
} from "./workload.js";

function integer(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) throw new Error(`${name}=${raw}: expected a whole number`);
  return value;
}

const config = {
  seconds: integer("BENCH_SECONDS", 10),
  warmupSeconds: integer("BENCH_WARMUP_SECONDS", 3),
  concurrency: integer("BENCH_CONCURRENCY", 64),
  sessions: integer("BENCH_SESSIONS", 4),
  organizations: integer("BENCH_ORGS", 2000),
  connections: integer("BENCH_CONNECTIONS", 100_000),
  bigOrganizationConnections: integer("BENCH_BIG_ORG_CONNECTIONS", 50_000),
  seedConcurrency: integer("BENCH_SEED_CONCURRENCY", 32),
  checkPool: integer("BENCH_CHECK_POOL", 20_000),
  batchSize: integer("BENCH_BATCH_SIZE", 50),
  createPool: integer("BENCH_CREATE_POOL", 60_000),
  pageSize: 100,
  listRepeats: integer("BENCH_LIST_REPEATS", 200),
  logLevel: process.env.BENCH_LOG_LEVEL || "info",
  cpuProfileDir: process.env.BENCH_CPU_PROF_DIR || undefined,
  postgresAdminUrl: process.env.BENCH_DATABASE_URL || process.env.TEST_DATABASE_URL || undefined,
  randomSeed: integer("BENCH_RANDOM_SEED", 20_260_101),
  client: process.env.BENCH_CLIENT === "node-http2" ? ("node-http2" as const) : ("raw" as const),
  targets: new Set((process.env.BENCH_TARGETS || "baseline,sqlite,postgres").split(",")),
};

const GOALS = { sqlite: 0.8, postgres: 0.5, p99: 1.5 } as const;
/** CPU used by processes other than the ones under test above which a window is called noisy. */
const NOISY_REST_PERCENT = 25;
const TOKEN_SERVICE = { authorization: "Bearer dev-token-service" };
const API_GATEWAY = { authorization: "Bearer dev-api-gateway", "x-actor": "api-key:api_bench" };

interface CheckRun {
  readonly result: LoadResult;
  /** CPU over the measured window, in % of one core: the server process, its PostgreSQL backends, the machine. */
  readonly serverCpuPercent: number;
  readonly databaseCpuPercent: number | undefined;
  readonly machineCpuPercent: number;
}

/** BatchCheckConnection over the same check pool, and its answers verified check by check. */
interface BatchRun {
  readonly run: CheckRun;
  readonly checks: number;
  readonly wrong: number;
  readonly failures: number;
  readonly examples: readonly string[];
}

interface TargetResult {
  readonly name: string;
  readonly check: CheckRun;
  readonly batch?: BatchRun;
  readonly create?: CheckRun;
  readonly list?: ListResult;
  readonly seed?: SeedReport;
  readonly peakRssMiB: number;
  readonly logBytes?: number;
  readonly profile?: readonly string[];
}

let workDir = "";
const log = (line = "") => process.stdout.write(`${line}\n`);
const progress = (line: string) => process.stderr.write(`${line}\n`);

// ---------------------------------------------------------------------------------------------
// Running the load client against one server process

/** The PostgreSQL backends serving a database (they do part of the service's work). */
type BackendPids = () => Promise<number[]>;

async function load(
  server: Child & { readonly port: number },
  name: string,
  plan: Omit<LoadPlan, "url" | "kind">,
  databaseBackends?: BackendPids,
): Promise<{ run: CheckRun; windowUs: readonly [number, number] }> {
  const path = join(workDir, `plan-${name}.json`);
  writeFileSync(path, JSON.stringify({ ...plan, kind: "load", url: `http://127.0.0.1:${server.port}` }));
  let startedAt = 0;
  let serverAtStart = 0;
  let machineAtStart = { busy: 0, total: 0 };
  let backendsAtStart: Map<number, number> | undefined;
  const figures = { serverCpuPercent: 0, databaseCpuPercent: undefined as number | undefined, machineCpuPercent: 0 };
  const run = await runClient<LoadPlan>(path, (edge) => {
    if (edge === "start") {
      startedAt = performance.now();
      serverAtStart = processCpuSeconds(server.pid);
      machineAtStart = machineCpuSeconds();
      void databaseBackends?.().then(
        (pids) => {
          backendsAtStart = new Map(pids.map((pid) => [pid, processCpuSeconds(pid)]));
        },
        () => {},
      );
      return;
    }
    const seconds = (performance.now() - startedAt) / 1000;
    figures.serverCpuPercent = ((processCpuSeconds(server.pid) - serverAtStart) / seconds) * 100;
    if (backendsAtStart !== undefined) {
      let used = 0;
      for (const [pid, before] of backendsAtStart) {
        try {
          used += Math.max(0, processCpuSeconds(pid) - before);
        } catch {
          // The backend went away during the window.
        }
      }
      figures.databaseCpuPercent = (used / seconds) * 100;
    }
    const machine = machineCpuSeconds();
    figures.machineCpuPercent =
      ((machine.busy - machineAtStart.busy) / (machine.total - machineAtStart.total)) * cpus().length * 100;
  });
  return { run: { result: run.result, ...figures }, windowUs: run.windowUs };
}

function loadPlan(path: string, headers: Record<string, string>, requests: readonly RequestItem[], reuse: boolean) {
  return {
    path,
    headers,
    requests,
    reuse,
    client: config.client,
    sessions: config.sessions,
    concurrency: config.concurrency,
    warmupSeconds: config.warmupSeconds,
    seconds: config.seconds,
  };
}

function describeCheck(name: string, run: CheckRun): void {
  const { result } = run;
  const errors = Object.values(result.errors).reduce((sum, times) => sum + times, 0) + result.wrongAnswers;
  progress(
    `  ${name}: ${Math.round(result.requestsPerSecond)} req/s, p50 ${result.latency.p50Ms.toFixed(2)} ms, ` +
      `p99 ${result.latency.p99Ms.toFixed(2)} ms (server CPU ${run.serverCpuPercent.toFixed(0)}%, ` +
      `client CPU ${result.clientCpuPercent.toFixed(0)}%)${errors > 0 ? `; ${errors} FAILED` : ""}`,
  );
}

// ---------------------------------------------------------------------------------------------
// Targets

async function benchBaseline(checks: readonly RequestItem[]): Promise<TargetResult> {
  progress("baseline: no-op @grpc/grpc-js server");
  const server = await startBaseline();
  try {
    // Its answer is fixed: check the status only.
    const requests = checks.map(({ body }) => ({ body }));
    const { run } = await load(server, "baseline-check", loadPlan(CHECK_PATH, TOKEN_SERVICE, requests, true));
    describeCheck("CheckConnection", run);
    return { name: "baseline (grpc-js no-op)", check: run, peakRssMiB: statusMiB(server.pid, "VmHWM") };
  } finally {
    await server.stop();
  }
}

async function benchService(
  name: string,
  databaseUrl: string,
  seed: SeedReport,
  checks: readonly RequestItem[],
  databaseBackends?: BackendPids,
): Promise<TargetResult> {
  const profileDir = config.cpuProfileDir === undefined ? undefined : join(config.cpuProfileDir, name);
  if (profileDir !== undefined) mkdirSync(profileDir, { recursive: true });
  const logPath = join(workDir, `service-${name}.log`);
  progress(`${name}: starting the service (LOG_LEVEL=${config.logLevel}, log to a file)`);
  const server = await startService({ databaseUrl, logLevel: config.logLevel, logPath, cpuProfileDir: profileDir });
  let stopped = false;
  try {
    const checkPlan = loadPlan(CHECK_PATH, TOKEN_SERVICE, checks, true);
    const check = await load(server, `${name}-check`, checkPlan, databaseBackends);
    describeCheck("CheckConnection", check.run);
    const batch = await benchBatch(server, name, checks, databaseBackends);

    const creates = createRequests(
      seed.dataset,
      config.createPool,
      config.randomSeed + 1,
      randomBytes(4).toString("hex"),
    );
    const createPlan = loadPlan(CREATE_PATH, API_GATEWAY, creates, false);
    const create = await load(server, `${name}-create`, createPlan, databaseBackends);
    describeCheck("CreateConnection", create.run);

    const listPlanPath = join(workDir, `plan-${name}-list.json`);
    const listPlan: ListPlan = {
      kind: "list",
      url: `http://127.0.0.1:${server.port}`,
      path: LIST_PATH,
      headers: { ...API_GATEWAY, "x-organization-id": seed.dataset.bigOrganizationId },
      sessions: 1,
      client: config.client,
      pageSize: config.pageSize,
      repeats: config.listRepeats,
    };
    writeFileSync(listPlanPath, JSON.stringify(listPlan));
    progress("  ListConnections: walking every page of the big organization");
    const list = (await runClient<ListPlan>(listPlanPath, () => {})).result;

    const peakRssMiB = statusMiB(server.pid, "VmHWM");
    await server.stop();
    stopped = true;
    let profile: string[] | undefined;
    if (profileDir !== undefined) {
      // CPU.<date>.<time>.<pid>.<thread>.<seq>.cpuprofile: thread 0 is the main thread (1 is tsx's loader).
      const file = readdirSync(profileDir)
        .filter((entry) => entry.endsWith(".cpuprofile") && entry.split(".")[4] === "0")
        .map((entry) => join(profileDir, entry))
        .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)[0];
      profile =
        file === undefined ? ["(no profile written)"] : [`profile: ${file}`, ...summariseProfile(file, check.windowUs)];
    }
    return {
      name,
      check: check.run,
      batch,
      create: create.run,
      list,
      seed,
      peakRssMiB,
      logBytes: statSync(logPath).size,
      ...(profile === undefined ? {} : { profile }),
    };
  } finally {
    if (!stopped) await server.stop();
  }
}

async function benchBatch(
  server: Child & { readonly port: number },
  name: string,
  checks: readonly RequestItem[],
  databaseBackends?: BackendPids,
): Promise<BatchRun> {
  const batches = batchCheckRequests(checks, config.batchSize);
  const verified = await verifyBatches(`http://127.0.0.1:${server.port}`, TOKEN_SERVICE, batches);
  const requests = batches.map(({ body }) => ({ body }));
  const { run } = await load(
    server,
    `${name}-batch`,
    loadPlan(BATCH_CHECK_PATH, TOKEN_SERVICE, requests, true),
    databaseBackends,
  );
  describeCheck(`BatchCheckConnection (${config.batchSize} checks per call)`, run);
  progress(`    = ${Math.round(run.result.requestsPerSecond * config.batchSize)} checks/s`);
  return { run, ...verified };
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

// ---------------------------------------------------------------------------------------------
// Output

function table(headers: readonly string[], rows: readonly (readonly string[])[]): void {
  const widths = headers.map((header, column) =>
    Math.max(header.length, ...rows.map((row) => (row[column] ?? "").length)),
  );
  const line = (cells: readonly string[]) =>
    cells
      .map((cell, column) => (column === 0 ? cell.padEnd(widths[column] ?? 0) : cell.padStart(widths[column] ?? 0)))
      .join("  ");
  log(line(headers));
  log(widths.map((width) => "-".repeat(width)).join("  "));
  for (const row of rows) log(line(row));
}

const count = (value: number) => Math.round(value).toLocaleString("en-US");
const ms = (value: number) => value.toFixed(2);
const ratio = (value: number) => `${value.toFixed(2)}x`;
const percent = (value: number) => `${value.toFixed(0)}%`;

function printReport(results: readonly TargetResult[]): void {
  const baseline = results.find((result) => result.name.startsWith("baseline"));
  log();
  log(
    `CheckConnection over gRPC: ${config.concurrency} in flight on ${config.sessions} HTTP/2 connections, ` +
      `warm-up ${config.warmupSeconds} s and one pass over the pool, ${config.seconds} s measured; ` +
      `pool of ${count(config.checkPool)} pre-encoded requests over random seeded connections ` +
      "(80% allowed; denied: wrong organization 7%, not active 8%, scope not granted 5%)",
  );
  table(
    ["target", "req/s", "p50 ms", "p99 ms", "req/s vs baseline", "p99 vs baseline", "goal"],
    results.map(({ name, check }) => {
      const goal = name === "sqlite" ? GOALS.sqlite : name === "postgres" ? GOALS.postgres : undefined;
      const throughputRatio = baseline ? check.result.requestsPerSecond / baseline.check.result.requestsPerSecond : 0;
      const p99Ratio = baseline ? check.result.latency.p99Ms / baseline.check.result.latency.p99Ms : 0;
      const verdict =
        goal === undefined || baseline === undefined
          ? ""
          : `req/s >= ${goal}x ${throughputRatio >= goal ? "met" : "MISSED"}; ` +
            `p99 <= ${GOALS.p99}x ${p99Ratio <= GOALS.p99 ? "met" : "MISSED"}`;
      return [
        name,
        count(check.result.requestsPerSecond),
        ms(check.result.latency.p50Ms),
        ms(check.result.latency.p99Ms),
        baseline ? ratio(throughputRatio) : "",
        baseline ? ratio(p99Ratio) : "",
        verdict,
      ];
    }),
  );
  printBatchReport(results);
  const services = results.filter((result) => result.create !== undefined);
  if (services.length > 0) {
    log();
    log("CreateConnection over gRPC (unique ordered pairs, api-gateway, x-organization-id = source, with request_id)");
    table(
      ["target", "req/s", "p50 ms", "p99 ms", "note"],
      services.map(({ name, create }) => {
        const result = create?.result as LoadResult;
        return [
          name,
          count(result.requestsPerSecond),
          ms(result.latency.p50Ms),
          ms(result.latency.p99Ms),
          result.exhausted ? `pool ran out after ${result.seconds.toFixed(1)} s` : "",
        ];
      }),
    );
    log();
    log(
      `ListConnections of the big organization (both directions, page_size ${config.pageSize}, one request at a time)`,
    );
    table(
      [
        "target",
        "rows",
        "pages",
        "walk s",
        "first p50",
        "first p99",
        "deep page",
        "deep p50",
        "deep p99",
        "deep/first p50",
      ],
      services.map(({ name, list }) => {
        const result = list as ListResult;
        return [
          name,
          count(result.rows),
          count(result.pages),
          result.walkSeconds.toFixed(1),
          ms(result.first.p50Ms),
          ms(result.first.p99Ms),
          `#${result.deepPage}`,
          ms(result.deep.p50Ms),
          ms(result.deep.p99Ms),
          ratio(result.deep.p50Ms / result.first.p50Ms),
        ];
      }),
    );
    log(`  (latencies in ms; first and deep page each fetched ${config.listRepeats} times after the walk)`);
    log();
    log("Seeding through the store (openStore, createConnection, saveTransition)");
    table(
      ["target", "organizations", "connections", "transitions", "seconds", "connections/s"],
      services.map(({ name, seed }) => {
        const report = seed as SeedReport;
        return [
          name,
          count(report.organizationCount),
          count(report.dataset.connections.length),
          count(report.transitions),
          report.seconds.toFixed(1),
          count(report.dataset.connections.length / report.seconds),
        ];
      }),
    );
  }
  log();
  log(
    `CPU over each measured window, in % of one core (the machine has ${cpus().length * 100}%); ` +
      "'rest' is everything else running on the machine",
  );
  const runs = results.flatMap(({ name, check, batch, create }) => [
    [`${name} CheckConnection`, check] as const,
    ...(batch === undefined ? [] : [[`${name} BatchCheckConnection`, batch.run] as const]),
    ...(create === undefined ? [] : [[`${name} CreateConnection`, create] as const]),
  ]);
  table(
    ["run", "server", "PostgreSQL", "load client", "rest", "machine"],
    runs.map(([name, run]) => {
      const rest =
        run.machineCpuPercent - run.serverCpuPercent - (run.databaseCpuPercent ?? 0) - run.result.clientCpuPercent;
      return [
        name,
        percent(run.serverCpuPercent),
        run.databaseCpuPercent === undefined ? "" : percent(run.databaseCpuPercent),
        percent(run.result.clientCpuPercent),
        percent(Math.max(0, rest)),
        percent(run.machineCpuPercent),
      ];
    }),
  );
  const noisy = runs.filter(
    ([, run]) =>
      run.machineCpuPercent - run.serverCpuPercent - (run.databaseCpuPercent ?? 0) - run.result.clientCpuPercent >
      NOISY_REST_PERCENT,
  );
  if (noisy.length > 0) {
    log(
      `WARNING: other processes used more than ${NOISY_REST_PERCENT}% of a core during ` +
        `${noisy.map(([name]) => name).join(", ")}: those figures (and ratios built on them) are not trustworthy; run again`,
    );
  }
  log();
  log("Peak resident memory (VmHWM) of each server process, and the service's log volume");
  table(
    ["target", "peak RSS MiB", `log (LOG_LEVEL=${config.logLevel})`],
    results.map(({ name, peakRssMiB, logBytes }) => [
      name,
      peakRssMiB.toFixed(0),
      logBytes === undefined ? "" : `${(logBytes / 2 ** 20).toFixed(1)} MiB`,
    ]),
  );
  for (const result of results) {
    if (result.profile === undefined) continue;
    log();
    log(`CPU profile of the ${result.name} service`);
    for (const line of result.profile) log(`  ${line}`);
  }
}

function printBatchReport(results: readonly TargetResult[]): void {
  const batched = results.filter((result) => result.batch !== undefined);
  if (batched.length === 0) return;
  log();
  log(
    `BatchCheckConnection, ${config.batchSize} checks per call from the same pool and load, next to CheckConnection ` +
      "(goal: at least 5x the checks per second); checks per server CPU-second also compare when other work shares the machine",
  );
  const perCpuSecond = (checks: number, run: CheckRun) => checks / Math.max(run.serverCpuPercent / 100, 0.01);
  table(
    [
      "target",
      "single checks/s",
      "batched checks/s",
      "calls/s",
      "p50 ms",
      "p99 ms",
      "vs single",
      "per CPU-s vs single",
    ],
    batched.map(({ name, check, batch }) => {
      const run = batch?.run as CheckRun;
      const perSecond = run.result.requestsPerSecond * config.batchSize;
      const single = check.result.requestsPerSecond;
      return [
        name,
        count(single),
        count(perSecond),
        count(run.result.requestsPerSecond),
        ms(run.result.latency.p50Ms),
        ms(run.result.latency.p99Ms),
        ratio(perSecond / single),
        ratio(perCpuSecond(perSecond, run) / perCpuSecond(single, check)),
      ];
    }),
  );
}

/** Every failed request and wrong answer of the run, as lines; empty when there were none. */
function problems(results: readonly TargetResult[]): string[] {
  const lines: string[] = [];
  for (const result of results) {
    const runs: [string, Readonly<Record<string, number>>, number, readonly string[]][] = [
      [
        "CheckConnection",
        result.check.result.errors,
        result.check.result.wrongAnswers,
        result.check.result.wrongAnswerExamples,
      ],
    ];
    if (result.create)
      runs.push(["CreateConnection", result.create.result.errors, result.create.result.wrongAnswers, []]);
    if (result.list) runs.push(["ListConnections", result.list.errors, 0, []]);
    if (result.batch) {
      const { run, wrong, failures, examples } = result.batch;
      const errors = failures > 0 ? { ...run.result.errors, "failed while verified": failures } : run.result.errors;
      runs.push(["BatchCheckConnection", errors, wrong, examples]);
    }
    for (const [rpc, errors, wrong, examples] of runs) {
      for (const [error, times] of Object.entries(errors)) lines.push(`${result.name} ${rpc}: ${times} x ${error}`);
      if (wrong > 0) lines.push(`${result.name} ${rpc}: ${wrong} wrong answers, e.g. ${examples.join("; ")}`);
    }
  }
  return lines;
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const started = performance.now();
  log(
    `machine: ${cpus()[0]?.model ?? "unknown CPU"}, ${cpus().length} cores; Node ${process.version}; ` +
      `load average ${loadavg()
        .map((value) => value.toFixed(2))
        .join(" ")}`,
  );
  log(
    `data set: ${count(config.connections)} connections, ${count(config.organizations)} regular organizations plus ` +
      `one big organization with ${count(config.bigOrganizationConnections)} connections (half each way, one leaf organization per two)`,
  );
  log(`service LOG_LEVEL=${config.logLevel}, stdout to a file; dev tokens; the load client runs in its own process`);
  workDir = await mkdtemp(join(tmpdir(), "connections-bench-"));
  onCleanUp("work directory", () => rm(workDir, { recursive: true, force: true }));

  const results: TargetResult[] = [];
  const sqliteUrl = `sqlite:${join(workDir, "bench.db")}`;
  const sqliteSeed = await seed("sqlite", sqliteUrl);
  const sqliteChecks = checkRequests(sqliteSeed.dataset, config.checkPool, config.randomSeed + 2);
  if (config.targets.has("baseline")) results.push(await benchBaseline(sqliteChecks));
  if (config.targets.has("sqlite")) results.push(await benchService("sqlite", sqliteUrl, sqliteSeed, sqliteChecks));

  if (config.targets.has("postgres")) {
    if (config.postgresAdminUrl === undefined) {
      progress("postgres: skipped (set BENCH_DATABASE_URL, e.g. postgres://postgres@127.0.0.1:5432/test)");
    } else {
      const { url, backends } = await createPostgresDatabase(config.postgresAdminUrl);
      const report = await seed("postgres", url);
      const checks = checkRequests(report.dataset, config.checkPool, config.randomSeed + 2);
      results.push(await benchService("postgres", url, report, checks, backends));
    }
  }

  printReport(results);
  log();
  log(
    `done in ${((performance.now() - started) / 1000).toFixed(0)} s; load average ${loadavg()
      .map((value) => value.toFixed(2))
      .join(" ")}`,
  );
  const failures = problems(results);
  if (failures.length > 0) {
    log();
    log("FAILED: requests failed or answers were wrong:");
    for (const line of failures) log(`  ${line}`);
    process.exitCode = 1;
  }
}

let interrupted = false;
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    if (interrupted) process.exit(130);
    interrupted = true;
    progress(`\n${signal}: stopping everything and cleaning up`);
    void cleanUp().finally(() => process.exit(130));
  });
}

try {
  await main();
} catch (error) {
  process.exitCode = 1;
  if (!interrupted)
    progress(`bench failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
} finally {
  await cleanUp();
}
