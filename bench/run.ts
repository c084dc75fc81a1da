// `npm run bench`: how fast the service answers, against what Node can do at all.
//
// Headline (h2load, an independent client): CheckConnection with one request body, against the
// service on SQLite (and on PostgreSQL when BENCH_DATABASE_URL or TEST_DATABASE_URL names a
// server), a @grpc/grpc-js no-op server and node:http2 answering a fixed frame (the ceiling), all
// started once and measured in alternating rounds, so that every ratio compares runs made
// seconds apart. The service runs as deployed: NODE_ENV=production, a callers file of sha256
// digests, its default LOG_LEVEL (BENCH_LOG_LEVEL overrides), metrics on, stdout to a file.
//
// Then the project's own client (load-client.ts) for what h2load cannot do: 100,000 distinct ids
// with the state mix, every answer checked; BatchCheckConnection over the same pool in checks per
// second next to it (batch-check.ts); CreateConnection; ListConnections deep pages; memory.
//
// Prints figures; asserts nothing about time. Fails (exit 1) only when a request failed or an
// answer was wrong. Every process, file and database it made is removed at the end.

import { createHash, randomBytes } from "node:crypto";
import { copyFileSync, mkdirSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { fromBinary } from "@bufbuild/protobuf";
import pg from "pg";
import {
  CheckConnectionResponse_Reason,
  CheckConnectionResponseSchema,
} from "../gen/connections/v1/connection_service_pb.js";
import { BATCH_CHECK_PATH, batchCheckRequests, verifyBatches } from "./batch-check.js";
import { checkReason, Errors, failureOf, frame, openChannel } from "./grpc-client.js";
import { ensureH2load, type H2loadResult, runH2load } from "./h2load.js";
import { overloadScenarios, runOverload } from "./overload.js";
import {
  buildService,
  type Child,
  cleanUp,
  endedChildrenCpuSeconds,
  machineCpuSeconds,
  onCleanUp,
  processCpuSeconds,
  runClient,
  startBenchServer,
  startService,
  statusMiB,
} from "./processes.js";
import { summariseProfile } from "./profile.js";
import { runScale } from "./scale.js";
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
import { runWritesBench } from "./writes.js";

function integer(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) throw new Error(`${name}=${raw}: expected a whole number`);
  return value;
}

const config = {
  h2load: process.env.BENCH_H2LOAD !== "off",
  ownClient: process.env.BENCH_OWN_CLIENT !== "off",
  rounds: integer("BENCH_ROUNDS", 3),
  h2loadSeconds: integer("BENCH_H2LOAD_SECONDS", 5),
  h2loadWarmupSeconds: integer("BENCH_H2LOAD_WARMUP_SECONDS", 2),
  h2loadThreads: integer("BENCH_H2LOAD_THREADS", 1),
  h2loadClients: integer("BENCH_H2LOAD_CLIENTS", 8),
  h2loadStreams: integer("BENCH_H2LOAD_STREAMS", 16),
  clientRounds: integer("BENCH_CLIENT_ROUNDS", 2),
  seconds: integer("BENCH_SECONDS", 5),
  warmupSeconds: integer("BENCH_WARMUP_SECONDS", 2),
  concurrency: integer("BENCH_CONCURRENCY", 128),
  sessions: integer("BENCH_SESSIONS", 8),
  organizations: integer("BENCH_ORGS", 2000),
  connections: integer("BENCH_CONNECTIONS", 100_000),
  bigOrganizationConnections: integer("BENCH_BIG_ORG_CONNECTIONS", 50_000),
  seedConcurrency: integer("BENCH_SEED_CONCURRENCY", 32),
  checkPool: integer("BENCH_CHECK_POOL", 100_000),
  batchSize: integer("BENCH_BATCH_SIZE", 50),
  createPool: integer("BENCH_CREATE_POOL", 60_000),
  pageSize: 100,
  listRepeats: integer("BENCH_LIST_REPEATS", 200),
  logLevel: process.env.BENCH_LOG_LEVEL || undefined,
  cpuProfileDir: process.env.BENCH_CPU_PROF_DIR || undefined,
  postgresAdminUrl: process.env.BENCH_DATABASE_URL || process.env.TEST_DATABASE_URL || undefined,
  randomSeed: integer("BENCH_RANDOM_SEED", 20_260_101),
  /** Another checkout of the service (with node_modules) to run on a copy of the SQLite data set, for before/after. */
  compareRoot: process.env.BENCH_COMPARE_ROOT || undefined,
  overload: process.env.BENCH_OVERLOAD !== "off",
  overloadSeconds: {
    seconds: integer("BENCH_OVERLOAD_SECONDS", 20),
    capacitySeconds: integer("BENCH_OVERLOAD_CAPACITY_SECONDS", 5),
  },
  targets: new Set((process.env.BENCH_TARGETS || "ceiling,grpc-js,sqlite,postgres,scale").split(",")),
  /** The writes section (bench/writes.ts); BENCH_TARGETS=none with BENCH_WRITES=on runs it alone. */
  writes: process.env.BENCH_WRITES !== "off",
};

/** The issue's goals, as ratios of figures taken in the same round. */
const GOALS = {
  sqliteVsGrpcJs: 1.0,
  sqliteVsCeiling: 0.5,
  postgresVsGrpcJs: 0.65,
  distinctIdsVsGrpcJs: 0.9,
  /** BatchCheckConnection's checks per second over CheckConnection's, same pool and client. */
  batchVsSingle: 5,
  /** The service's p99 over grpc-js's at the same concurrency. */
  p99VsGrpcJs: 1.0,
} as const;
/** CPU used by processes other than the ones under test above which a window is called noisy. */
const NOISY_REST_PERCENT = 25;

const log = (line = "") => process.stdout.write(`${line}\n`);
const progress = (line: string) => process.stderr.write(`${line}\n`);
let workDir = "";

// ---------------------------------------------------------------------------------------------
// Servers under test

/** The PostgreSQL backends serving a database (they do part of the service's work). */
type BackendPids = () => Promise<number[]>;

interface Target {
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

interface Credentials {
  readonly path: string;
  readonly tokenService: Record<string, string>;
  readonly apiGateway: Record<string, string>;
  readonly dashboard: Record<string, string>;
}

/** A production callers file: sha256 digests of fresh random tokens, never the dev tokens. */
function writeCallersFile(): Credentials {
  const tokens = {
    "token-service": randomBytes(32).toString("base64url"),
    "api-gateway": randomBytes(32).toString("base64url"),
    "dashboard-bff": randomBytes(32).toString("base64url"),
  };
  const digests = Object.fromEntries(
    Object.entries(tokens).map(([caller, token]) => [
      caller,
      [`sha256:${createHash("sha256").update(token).digest("hex")}`],
    ]),
  );
  const path = join(workDir, "callers.json");
  writeFileSync(path, JSON.stringify(digests), { mode: 0o600 });
  return {
    path,
    tokenService: { authorization: `Bearer ${tokens["token-service"]}` },
    apiGateway: { authorization: `Bearer ${tokens["api-gateway"]}`, "x-actor": "api-key:api_bench" },
    dashboard: { authorization: `Bearer ${tokens["dashboard-bff"]}`, "x-actor": "user:bench" },
  };
}

async function startServiceTarget(
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

async function startTargets(credentials: Credentials): Promise<Target[]> {
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
        await startServiceTarget("compare", `sqlite:${copy}`, sqliteReport, credentials, undefined, config.compareRoot),
      );
    }
    progress("sqlite: starting the service");
    targets.push(await startServiceTarget("sqlite", sqliteUrl, sqliteReport, credentials, undefined));
  }
  if (postgresSeeded !== undefined) {
    progress("postgres: starting the service");
    const { url, backends, report } = postgresSeeded;
    targets.push(await startServiceTarget("postgres", url, report, credentials, backends));
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

// ---------------------------------------------------------------------------------------------
// CPU over a measured window: the server, its PostgreSQL backends, the whole machine

interface CpuFigures {
  /** CPU seconds the server used over the window. */
  readonly serverSeconds: number;
  /** In % of one core. */
  readonly server: number;
  /** The client, when it is a child process that ended inside the window (h2load). */
  readonly client: number;
  readonly database: number | undefined;
  readonly machine: number;
}

function cpuWindow(target: Target): { end(): Promise<CpuFigures> } {
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

// ---------------------------------------------------------------------------------------------
// Headline: h2load, one CheckConnection body, alternating rounds

interface HeadlineRun {
  readonly round: number;
  readonly result: H2loadResult;
  readonly cpu: CpuFigures;
  /** process.hrtime microseconds of the measured part (for the service's CPU profile). */
  readonly windowUs: readonly [number, number];
}

interface Headline {
  /** The body every request carries, and what a correct answer looks like. */
  readonly connectionId: string;
  readonly runs: Map<string, HeadlineRun[]>;
  /** Expected bytes of DATA per answer, per target (its framed answer, found before the run). */
  readonly answerBytes: Map<string, number>;
}

const nowUs = () => Number(process.hrtime.bigint() / 1000n);

/** One call with `body`: the framed answer, or an error when it is not an OK CheckConnection allowing it. */
async function checkOnce(target: Target, headers: Record<string, string>, body: Buffer): Promise<Buffer> {
  const errors = new Errors();
  const channel = await openChannel({ url: target.url, path: CHECK_PATH, sessions: 1 }, errors);
  try {
    const answer = await new Promise<Parameters<typeof failureOf>[0]>((resolve) =>
      channel.call(0, headers, body, resolve),
    );
    const failure = failureOf(answer) ?? Object.keys(errors.counts)[0];
    if (failure !== undefined) throw new Error(`${target.label}: CheckConnection failed: ${failure}`);
    if (checkReason(answer.body) !== CheckConnectionResponse_Reason.ALLOWED) {
      const response = fromBinary(CheckConnectionResponseSchema, answer.body.subarray(5));
      throw new Error(`${target.label}: expected an allowed check, got reason ${response.reason}`);
    }
    return answer.body;
  } finally {
    channel.close();
  }
}

async function runHeadline(targets: readonly Target[], credentials: Credentials): Promise<Headline> {
  const binary = ensureH2load(progress);
  // Per service, one allowed check: the first ACTIVE Connection of its pool, issued by its source.
  // The baselines answer anything; they get the first service's.
  const bodies = new Map<string, { path: string; connectionId: string }>();
  const answerBytes = new Map<string, number>();
  for (const target of targets) {
    const owner = target.service ?? targets.find((candidate) => candidate.service !== undefined)?.service;
    const item = owner?.checks.find((check) => check.expectReason === CheckConnectionResponse_Reason.ALLOWED);
    if (owner === undefined || item === undefined) throw new Error("the headline needs a service target");
    const body = frame(Buffer.from(item.body, "base64"));
    const path = join(workDir, `check-request-${target.name}.bin`);
    writeFileSync(path, body);
    const connectionId = owner.seed.dataset.connections.find((connection) => body.includes(connection.id))?.id ?? "?";
    bodies.set(target.name, { path, connectionId });
    answerBytes.set(target.name, (await checkOnce(target, credentials.tokenService, body)).length);
  }
  const connectionId = [...new Set([...bodies.values()].map((body) => body.connectionId))].join(", ");
  const h2load = (target: Target, seconds: number, logName: string) =>
    runH2load(binary, {
      url: target.url,
      bodyPath: bodies.get(target.name)?.path as string,
      headers: credentials.tokenService,
      threads: config.h2loadThreads,
      clients: config.h2loadClients,
      streamsPerClient: config.h2loadStreams,
      seconds,
      logPath: join(workDir, `h2load-${target.name}-${logName}.log`),
    });
  // Warm-up, unmeasured: the JIT and every cache see this load before the first round.
  for (const target of targets) await h2load(target, config.h2loadWarmupSeconds, "warm-up");
  const runs = new Map<string, HeadlineRun[]>(targets.map((target) => [target.name, []]));
  for (let round = 0; round < config.rounds; round++) {
    // Each round starts with a different target, so that none is always first or last.
    const order = targets.map((_, index) => targets[(index + round) % targets.length] as Target);
    for (const target of order) {
      const cpu = cpuWindow(target);
      const result = await h2load(target, config.h2loadSeconds, String(round));
      const endUs = nowUs();
      const figures = await cpu.end();
      runs.get(target.name)?.push({
        round,
        result,
        cpu: figures,
        windowUs: [endUs - config.h2loadSeconds * 1e6, endUs],
      });
      progress(
        `  round ${round + 1} ${target.label}: ${Math.round(result.requestsPerSecond)} req/s, ` +
          `p99 ${result.p99Ms.toFixed(2)} ms (server CPU ${figures.server.toFixed(0)}%, machine ${figures.machine.toFixed(0)}%)` +
          (result.non2xx > 0 ? `; ${result.non2xx} FAILED` : ""),
      );
    }
  }
  return { connectionId, runs, answerBytes };
}

// ---------------------------------------------------------------------------------------------
// The project's own client: many distinct ids with the state mix, creates, pages

interface ClientRunFigures {
  readonly result: LoadResult;
  readonly cpu: CpuFigures;
  /** process.hrtime microseconds of the measured part (for the service's CPU profile). */
  readonly windowUs: readonly [number, number];
}

async function load(target: Target, name: string, plan: Omit<LoadPlan, "url" | "kind">): Promise<ClientRunFigures> {
  const path = join(workDir, `plan-${target.name}-${name}.json`);
  writeFileSync(path, JSON.stringify({ ...plan, kind: "load", url: target.url }));
  let window: ReturnType<typeof cpuWindow> | undefined;
  let figures: Promise<CpuFigures> | undefined;
  const run = await runClient<LoadPlan>(path, (edge) => {
    if (edge === "start") window = cpuWindow(target);
    else figures = window?.end();
  });
  const cpu = (await figures) ?? {
    serverSeconds: Number.NaN,
    server: Number.NaN,
    client: 0,
    database: undefined,
    machine: Number.NaN,
  };
  // The load client is still running when its window ends: it reports its own CPU.
  return { result: run.result, cpu: { ...cpu, client: run.result.clientCpuPercent }, windowUs: run.windowUs };
}

function loadPlan(path: string, headers: Record<string, string>, requests: readonly RequestItem[], reuse: boolean) {
  return {
    path,
    headers,
    requests,
    reuse,
    sessions: config.sessions,
    concurrency: config.concurrency,
    warmupSeconds: config.warmupSeconds,
    seconds: config.seconds,
  };
}

function describeRun(name: string, run: ClientRunFigures): void {
  const { result } = run;
  const errors = Object.values(result.errors).reduce((sum, times) => sum + times, 0) + result.wrongAnswers;
  progress(
    `  ${name}: ${Math.round(result.requestsPerSecond)} req/s, p50 ${result.latency.p50Ms.toFixed(2)} ms, ` +
      `p99 ${result.latency.p99Ms.toFixed(2)} ms (server CPU ${run.cpu.server.toFixed(0)}%, ` +
      `client CPU ${result.clientCpuPercent.toFixed(0)}%)${errors > 0 ? `; ${errors} FAILED` : ""}`,
  );
}

/** CheckConnection over the pool of distinct ids: the services and grpc-js, alternating rounds. */
async function runDistinctChecks(
  targets: readonly Target[],
  credentials: Credentials,
): Promise<Map<string, ClientRunFigures[]>> {
  // The BENCH_COMPARE_ROOT service is in the headline only.
  const services = targets.filter((target) => target.service !== undefined && target.name !== "compare");
  const grpcJs = targets.find((target) => target.name === "grpc-js");
  const measured = grpcJs === undefined ? services : [grpcJs, ...services];
  const runs = new Map<string, ClientRunFigures[]>(measured.map((target) => [target.name, []]));
  // grpc-js answers every request the same: it gets the first service's pool, status checked only.
  const fixedAnswers = (services[0]?.service?.checks ?? []).map(({ body }) => ({ body }));
  for (let round = 0; round < config.clientRounds; round++) {
    for (const target of measured) {
      const pool = target.service?.checks ?? fixedAnswers;
      const run = await load(target, `check-${round}`, loadPlan(CHECK_PATH, credentials.tokenService, pool, true));
      describeRun(`round ${round + 1} ${target.label} CheckConnection, ${count(pool.length)} distinct requests`, run);
      runs.get(target.name)?.push(run);
    }
  }
  return runs;
}

/** BatchCheckConnection runs of one service, and its answers verified check by check beforehand. */
interface BatchRuns {
  readonly runs: ClientRunFigures[];
  readonly checks: number;
  readonly wrong: number;
  readonly failures: number;
  readonly examples: readonly string[];
}

/**
 * BatchCheckConnection over each service's own check pool regrouped into batches, in alternating
 * rounds like the single checks; every batch's answers are verified once before the runs.
 */
async function runBatchChecks(targets: readonly Target[], credentials: Credentials): Promise<Map<string, BatchRuns>> {
  const services = targets.filter((target) => target.service !== undefined && target.name !== "compare");
  const batches = new Map<string, BatchRuns & { readonly requests: readonly RequestItem[] }>();
  for (const target of services) {
    const items = batchCheckRequests(target.service?.checks ?? [], config.batchSize);
    progress(`  ${target.label} BatchCheckConnection: verifying the answers of ${count(items.length)} batches`);
    const verified = await verifyBatches(target.url, credentials.tokenService, items);
    batches.set(target.name, { ...verified, runs: [], requests: items.map(({ body }) => ({ body })) });
  }
  for (let round = 0; round < config.clientRounds; round++) {
    for (const target of services) {
      const batch = batches.get(target.name);
      if (batch === undefined) continue;
      const plan = loadPlan(BATCH_CHECK_PATH, credentials.tokenService, batch.requests, true);
      const run = await load(target, `batch-${round}`, plan);
      describeRun(`round ${round + 1} ${target.label} BatchCheckConnection (${config.batchSize} checks per call)`, run);
      batch.runs.push(run);
    }
  }
  return new Map([...batches].map(([name, { requests, ...runs }]) => [name, runs]));
}

interface ServiceExtras {
  readonly create: ClientRunFigures;
  readonly list: ListResult;
  readonly peakRssMiB: number;
}

async function runServiceExtras(target: Target, credentials: Credentials): Promise<ServiceExtras> {
  const service = target.service;
  if (service === undefined) throw new Error(`${target.name} is not a service`);
  const creates = createRequests(
    service.seed.dataset,
    config.createPool,
    config.randomSeed + 1,
    randomBytes(4).toString("hex"),
  );
  const create = await load(target, "create", loadPlan(CREATE_PATH, credentials.apiGateway, creates, false));
  describeRun(`${target.label} CreateConnection`, create);

  const listPlanPath = join(workDir, `plan-${target.name}-list.json`);
  const listPlan: ListPlan = {
    kind: "list",
    url: target.url,
    path: LIST_PATH,
    headers: { ...credentials.apiGateway, "x-organization-id": service.seed.dataset.bigOrganizationId },
    sessions: 1,
    pageSize: config.pageSize,
    repeats: config.listRepeats,
  };
  writeFileSync(listPlanPath, JSON.stringify(listPlan));
  progress(`  ${target.label} ListConnections: walking every page of the big organization`);
  const list = (await runClient<ListPlan>(listPlanPath, () => {})).result;
  return { create, list, peakRssMiB: statusMiB(target.server.pid, "VmHWM") };
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

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return Number.NaN;
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1
    ? (sorted[middle] as number)
    : ((sorted[middle - 1] as number) + (sorted[middle] as number)) / 2;
}

/** Per round, a's figure over b's; their median and range. */
function roundRatios<R extends { readonly round: number }>(
  a: readonly R[] | undefined,
  b: readonly R[] | undefined,
  figure: (run: R) => number,
): { median: number; low: number; high: number } | undefined {
  if (a === undefined || b === undefined || a.length === 0) return undefined;
  const ratios = a.flatMap((run) => {
    const other = b.find((candidate) => candidate.round === run.round);
    return other === undefined ? [] : [figure(run) / figure(other)];
  });
  if (ratios.length === 0) return undefined;
  return { median: median(ratios), low: Math.min(...ratios), high: Math.max(...ratios) };
}

function verdict(label: string, value: number | undefined, goal: number, atMost = false): string {
  if (value === undefined) return `${label}: not measured`;
  const met = atMost ? value <= goal : value >= goal;
  return `${label} ${ratio(value)} (goal ${atMost ? "<=" : ">="} ${goal}x): ${met ? "met" : "MISSED"}`;
}

function printHeadline(targets: readonly Target[], headline: Headline): string[] {
  const verdicts: string[] = [];
  log();
  log(
    `CheckConnection over gRPC by h2load -t${config.h2loadThreads} -c${config.h2loadClients} -m${config.h2loadStreams}: ` +
      `one request body per service (an allowed check of connection ${headline.connectionId}), a ${config.h2loadWarmupSeconds} s warm-up run ` +
      `per server, then ${config.h2loadSeconds} s per run, ${config.rounds} alternating rounds; figures are the median over rounds, ` +
      "ratios the median (and range) of same-round ratios. 'CPU us/req' is the server's CPU time per answer: " +
      "unlike req/s it hardly depends on what else the machine is doing, and on a machine with a core to spare " +
      "per server, req/s ratios follow its inverse",
  );
  const runsOf = (name: string) => headline.runs.get(name);
  const rate = (run: HeadlineRun) => run.result.requestsPerSecond;
  const p99 = (run: HeadlineRun) => run.result.p99Ms;
  /** Server CPU per answer: what each server spends, however busy the machine was. */
  const cost = (run: HeadlineRun) => (run.cpu.serverSeconds / run.result.done) * 1e6;
  const comparing = headline.runs.has("compare");
  const rows = targets.map((target) => {
    const runs = runsOf(target.name) ?? [];
    const pick = (figure: (run: HeadlineRun) => number) => median(runs.map(figure));
    const vsGrpcJs = roundRatios(runs, runsOf("grpc-js"), rate);
    const vsCeiling = roundRatios(runs, runsOf("ceiling"), rate);
    const range = (value: ReturnType<typeof roundRatios>) =>
      value === undefined ? "" : `${ratio(value.median)} (${value.low.toFixed(2)}-${value.high.toFixed(2)})`;
    return [
      target.label,
      runs.map((run) => count(rate(run))).join(" / "),
      count(pick(rate)),
      ms(pick((run) => run.result.meanMs)),
      ms(pick((run) => run.result.sdMs)),
      ms(pick((run) => run.result.p50Ms)),
      ms(pick((run) => run.result.p90Ms)),
      ms(pick(p99)),
      ms(pick((run) => run.result.maxMs)),
      range(vsGrpcJs),
      range(vsCeiling),
      count(pick(cost)),
      range(roundRatios(runsOf("grpc-js"), runs, cost)),
      ...(comparing
        ? [range(roundRatios(runs, runsOf("compare"), rate)), range(roundRatios(runsOf("compare"), runs, cost))]
        : []),
    ];
  });
  table(
    [
      "server",
      "req/s by round",
      "req/s",
      "mean ms",
      "sd ms",
      "p50 ms",
      "p90 ms",
      "p99 ms",
      "max ms",
      "vs grpc-js",
      "vs ceiling",
      "CPU us/req",
      "grpc-js CPU/req over this",
      ...(comparing ? ["vs BENCH_COMPARE_ROOT", "its CPU/req over this"] : []),
    ],
    rows,
  );
  const sqlite = runsOf("sqlite");
  const postgres = runsOf("postgres");
  verdicts.push(
    verdict(
      "SQLite vs grpc-js (h2load, one id)",
      roundRatios(sqlite, runsOf("grpc-js"), rate)?.median,
      GOALS.sqliteVsGrpcJs,
    ),
  );
  verdicts.push(
    verdict(
      "SQLite vs node:http2 ceiling",
      roundRatios(sqlite, runsOf("ceiling"), rate)?.median,
      GOALS.sqliteVsCeiling,
    ),
  );
  verdicts.push(
    verdict("SQLite p99 vs grpc-js p99", roundRatios(sqlite, runsOf("grpc-js"), p99)?.median, GOALS.p99VsGrpcJs, true),
  );
  if (postgres !== undefined) {
    verdicts.push(
      verdict(
        "PostgreSQL vs grpc-js (h2load, one id)",
        roundRatios(postgres, runsOf("grpc-js"), rate)?.median,
        GOALS.postgresVsGrpcJs,
      ),
    );
  }
  log(
    `  (answer bytes per request: ${[...headline.answerBytes].map(([name, bytes]) => `${name} ${bytes}`).join(", ")}; ` +
      "every h2load run was checked to have received exactly that many DATA bytes per request)",
  );
  return verdicts;
}

function printDistinct(targets: readonly Target[], runs: Map<string, ClientRunFigures[]>): string[] {
  log();
  log(
    `CheckConnection over gRPC by the project's client (node:http2, ${config.concurrency} in flight on ${config.sessions} ` +
      `connections, ${config.warmupSeconds} s warm-up and one pass over the pool, ${config.seconds} s measured, ` +
      `${config.clientRounds} alternating rounds): a pool of ${count(config.checkPool)} requests over random seeded ` +
      "connections (80% allowed; denied: wrong organization 7%, not active 8%, scope not granted 5%), every answer's reason checked",
  );
  const withRound = (name: string) => runs.get(name)?.map((run, round) => ({ ...run, round }));
  const rate = (run: ClientRunFigures) => run.result.requestsPerSecond;
  table(
    ["server", "req/s by round", "req/s", "p50 ms", "p90 ms", "p99 ms", "vs grpc-js", "client CPU"],
    targets
      .filter((target) => runs.has(target.name))
      .map((target) => {
        const list = runs.get(target.name) ?? [];
        const vs = roundRatios(withRound(target.name), withRound("grpc-js"), rate);
        return [
          target.label,
          list.map((run) => count(rate(run))).join(" / "),
          count(median(list.map(rate))),
          ms(median(list.map((run) => run.result.latency.p50Ms))),
          ms(median(list.map((run) => run.result.latency.p90Ms))),
          ms(median(list.map((run) => run.result.latency.p99Ms))),
          vs === undefined ? "" : `${ratio(vs.median)} (${vs.low.toFixed(2)}-${vs.high.toFixed(2)})`,
          percent(median(list.map((run) => run.result.clientCpuPercent))),
        ];
      }),
  );
  return [
    verdict(
      `SQLite vs grpc-js, ${count(config.checkPool)} distinct requests (own client)`,
      roundRatios(withRound("sqlite"), withRound("grpc-js"), rate)?.median,
      GOALS.distinctIdsVsGrpcJs,
    ),
  ];
}

function printBatches(
  targets: readonly Target[],
  single: Map<string, ClientRunFigures[]>,
  batches: Map<string, BatchRuns>,
): string[] {
  const services = targets.filter((target) => batches.has(target.name));
  if (services.length === 0) return [];
  log();
  log(
    `BatchCheckConnection by the project's client: the same pool in batches of ${config.batchSize}, same connections ` +
      "and calls in flight, rounds alternating with the other services; checks per second against the single " +
      "CheckConnection runs above (ratios of medians), and per server CPU-second, which still compares when " +
      "other work shares the machine",
  );
  const checksPerSecond = (run: ClientRunFigures) => run.result.requestsPerSecond * config.batchSize;
  const perCpuSecond = (perSecond: number, run: ClientRunFigures) => perSecond / Math.max(run.cpu.server / 100, 0.01);
  const verdicts: string[] = [];
  table(
    [
      "server",
      "checks/s by round",
      "checks/s",
      "calls/s",
      "p50 ms",
      "p99 ms",
      "single checks/s",
      "vs single",
      "per CPU-s",
    ],
    services.map((target) => {
      const runs = batches.get(target.name)?.runs ?? [];
      const singles = single.get(target.name) ?? [];
      const batched = median(runs.map(checksPerSecond));
      const alone = median(singles.map((run) => run.result.requestsPerSecond));
      const cpuRatio =
        median(runs.map((run) => perCpuSecond(checksPerSecond(run), run))) /
        median(singles.map((run) => perCpuSecond(run.result.requestsPerSecond, run)));
      verdicts.push(
        verdict(`${target.label}: BatchCheckConnection checks/s vs single`, batched / alone, GOALS.batchVsSingle),
      );
      return [
        target.label,
        runs.map((run) => count(checksPerSecond(run))).join(" / "),
        count(batched),
        count(median(runs.map((run) => run.result.requestsPerSecond))),
        ms(median(runs.map((run) => run.result.latency.p50Ms))),
        ms(median(runs.map((run) => run.result.latency.p99Ms))),
        count(alone),
        ratio(batched / alone),
        ratio(cpuRatio),
      ];
    }),
  );
  return verdicts;
}

function printExtras(targets: readonly Target[], extras: Map<string, ServiceExtras>): void {
  const services = targets.filter((target) => extras.has(target.name));
  if (services.length === 0) return;
  const of = (target: Target) => extras.get(target.name) as ServiceExtras;
  log();
  log("CreateConnection over gRPC (unique ordered pairs, api-gateway, x-organization-id = source, with request_id)");
  table(
    ["server", "req/s", "p50 ms", "p99 ms", "note"],
    services.map((target) => {
      const result = of(target).create.result;
      return [
        target.label,
        count(result.requestsPerSecond),
        ms(result.latency.p50Ms),
        ms(result.latency.p99Ms),
        result.exhausted ? `pool ran out after ${result.seconds.toFixed(1)} s` : "",
      ];
    }),
  );
  log();
  log(`ListConnections of the big organization (both directions, page_size ${config.pageSize}, one request at a time)`);
  table(
    [
      "server",
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
    services.map((target) => {
      const result = of(target).list;
      return [
        target.label,
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
    ["server", "organizations", "connections", "transitions", "seconds", "connections/s"],
    services.map((target) => {
      const report = target.service?.seed as SeedReport;
      return [
        target.label,
        count(report.organizationCount),
        count(report.dataset.connections.length),
        count(report.transitions),
        report.seconds.toFixed(1),
        count(report.dataset.connections.length / report.seconds),
      ];
    }),
  );
}

function printCpu(
  targets: readonly Target[],
  headline: Headline | undefined,
  distinct: Map<string, ClientRunFigures[]>,
  batches: Map<string, BatchRuns>,
) {
  log();
  log(
    `CPU over the measured windows (median), in % of one core (the machine has ${cpus().length * 100}%); ` +
      "'rest' is everything else running on the machine (other work makes figures noisy)",
  );
  const rows: string[][] = [];
  for (const target of targets) {
    const add = (name: string, figures: readonly CpuFigures[]) => {
      if (figures.length === 0) return;
      const server = median(figures.map((cpu) => cpu.server));
      const database = figures[0]?.database === undefined ? undefined : median(figures.map((cpu) => cpu.database ?? 0));
      const client = median(figures.map((cpu) => cpu.client));
      const machine = median(figures.map((cpu) => cpu.machine));
      rows.push([
        `${target.label}, ${name}`,
        percent(server),
        database === undefined ? "" : percent(database),
        percent(client),
        percent(Math.max(0, machine - server - (database ?? 0) - client)),
        percent(machine),
      ]);
    };
    add("h2load", headline?.runs.get(target.name)?.map((run) => run.cpu) ?? []);
    add("own client", distinct.get(target.name)?.map((run) => run.cpu) ?? []);
    add("own client, batches", batches.get(target.name)?.runs.map((run) => run.cpu) ?? []);
  }
  table(["run", "server", "PostgreSQL", "client", "rest", "machine"], rows);
}

// ---------------------------------------------------------------------------------------------

/** Every failed request and wrong answer of the run, as lines; empty when there were none. */
function problems(
  headline: Headline | undefined,
  distinct: Map<string, ClientRunFigures[]>,
  batches: Map<string, BatchRuns>,
  extras: Map<string, ServiceExtras>,
): string[] {
  const lines: string[] = [];
  for (const [name, runs] of headline?.runs ?? []) {
    const expected = headline?.answerBytes.get(name);
    for (const { result, round } of runs) {
      const at = `h2load ${name} round ${round + 1}`;
      // Streams still open when the time is up count as failed: at most one per stream slot.
      const inFlight = config.h2loadClients * config.h2loadStreams;
      if (result.failed > inFlight) lines.push(`${at}: ${result.failed} requests failed`);
      if (result.non2xx > 0) lines.push(`${at}: ${result.non2xx} answers with an HTTP status other than 2xx`);
      if (expected !== undefined && Math.abs(result.dataBytesPerAnswer - expected) > 0.001) {
        lines.push(
          `${at}: ${result.dataBytesPerAnswer.toFixed(2)} DATA bytes per answer, expected ${expected} ` +
            "(some answers were not the allowed check)",
        );
      }
    }
  }
  const loadProblems = (label: string, result: LoadResult) => {
    for (const [error, times] of Object.entries(result.errors)) lines.push(`${label}: ${times} x ${error}`);
    if (result.wrongAnswers > 0) {
      lines.push(`${label}: ${result.wrongAnswers} wrong answers, e.g. ${result.wrongAnswerExamples.join("; ")}`);
    }
  };
  for (const [name, runs] of distinct) for (const run of runs) loadProblems(`${name} CheckConnection`, run.result);
  for (const [name, batch] of batches) {
    for (const run of batch.runs) loadProblems(`${name} BatchCheckConnection`, run.result);
    if (batch.failures > 0) lines.push(`${name} BatchCheckConnection: ${batch.failures} calls failed while verified`);
    if (batch.wrong > 0) {
      lines.push(`${name} BatchCheckConnection: ${batch.wrong} wrong answers, e.g. ${batch.examples.join("; ")}`);
    }
  }
  for (const [name, extra] of extras) {
    loadProblems(`${name} CreateConnection`, extra.create.result);
    for (const [error, times] of Object.entries(extra.list.errors)) {
      lines.push(`${name} ListConnections: ${times} x ${error}`);
    }
  }
  return lines;
}

function profileOf(target: Target, windows: readonly (readonly [number, number])[]): string[] {
  const dir = target.service?.profileDir;
  if (dir === undefined) return [];
  // CPU.<date>.<time>.<pid>.<thread>.<seq>.cpuprofile: thread 0 is the main thread (1 is tsx's loader).
  const file = readdirSync(dir)
    .filter((entry) => entry.endsWith(".cpuprofile") && entry.split(".")[4] === "0")
    .map((entry) => join(dir, entry))
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)[0];
  return file === undefined ? ["(no profile written)"] : [`profile: ${file}`, ...summariseProfile(file, windows)];
}

async function main(): Promise<void> {
  const started = performance.now();
  log(
    `machine: ${cpus()[0]?.model ?? "unknown CPU"}, ${cpus().length} cores (nproc); Node ${process.version}; ` +
      `load average ${loadavg()
        .map((value) => value.toFixed(2))
        .join(" ")}`,
  );
  log(
    `data set: ${count(config.connections)} connections, ${count(config.organizations)} regular organizations plus ` +
      `one big organization with ${count(config.bigOrganizationConnections)} connections (half each way, one leaf organization per two)`,
  );
  log(
    `service: NODE_ENV=production, a CALLERS_FILE of sha256 digests, LOG_LEVEL=${config.logLevel ?? "its default"}, ` +
      "metrics on, stdout to a file; each client runs in its own process",
  );
  workDir = await mkdtemp(join(tmpdir(), "connections-bench-"));
  onCleanUp("work directory", () => rm(workDir, { recursive: true, force: true }));
  const credentials = writeCallersFile();
  const targets = await startTargets(credentials);

  const verdicts: string[] = [];
  let headline: Headline | undefined;
  if (config.h2load && targets.some((target) => target.service !== undefined)) {
    progress("headline: h2load, alternating rounds");
    headline = await runHeadline(targets, credentials);
  }
  let distinct = new Map<string, ClientRunFigures[]>();
  let batches = new Map<string, BatchRuns>();
  const extras = new Map<string, ServiceExtras>();
  if (config.ownClient) {
    progress("own client: distinct ids, alternating rounds");
    distinct = await runDistinctChecks(targets, credentials);
    progress("own client: BatchCheckConnection, alternating rounds");
    batches = await runBatchChecks(targets, credentials);
    for (const target of targets) {
      if (target.service !== undefined && target.name !== "compare") {
        extras.set(target.name, await runServiceExtras(target, credentials));
      }
    }
  }
  const peakRss = targets.map((target) => [target.label, statusMiB(target.server.pid, "VmHWM")] as const);
  const overloaded = targets.find((target) => target.name === "sqlite");
  if (config.overload && overloaded?.service !== undefined) {
    const { checks, seed } = overloaded.service;
    const allowed = checks.find((check) => check.expectReason === CheckConnectionResponse_Reason.ALLOWED);
    const connection = seed.dataset.connections.find((candidate) => candidate.state === "ACTIVE");
    if (allowed === undefined || connection === undefined)
      throw new Error("overload: the data set has no ACTIVE Connection");
    const scenarios = overloadScenarios(credentials, frame(Buffer.from(allowed.body, "base64")), connection);
    const inputs = { url: overloaded.url, pid: overloaded.server.pid, h2load: ensureH2load(progress), workDir };
    verdicts.push(...(await runOverload({ ...inputs, scenarios, ...config.overloadSeconds }, log, progress)));
  }
  for (const target of targets) await target.server.stop();
  // Its own services and data set, after the others have stopped (bench/scale.ts).
  if (config.targets.has("scale")) {
    verdicts.push(
      ...(await runScale({
        workDir,
        callersFile: credentials.path,
        headers: credentials.tokenService,
        log,
        progress,
        integer,
      })),
    );
  }

  if (headline !== undefined) verdicts.push(...printHeadline(targets, headline));
  if (config.ownClient) verdicts.push(...printDistinct(targets, distinct), ...printBatches(targets, distinct, batches));
  printExtras(targets, extras);
  printCpu(targets, headline, distinct, batches);
  log();
  log("Peak resident memory (VmHWM) of each server process, and the service's log volume");
  table(
    ["server", "peak RSS MiB", "log"],
    peakRss.map(([label, mib]) => {
      const target = targets.find((candidate) => candidate.label === label);
      const logPath = target?.service?.logPath;
      return [
        label,
        mib.toFixed(0),
        logPath === undefined ? "" : `${(statSync(logPath).size / 2 ** 20).toFixed(1)} MiB`,
      ];
    }),
  );
  for (const target of targets) {
    const measured = [
      ["h2load runs", headline?.runs.get(target.name)?.map((run) => run.windowUs)],
      ["distinct-id runs", distinct.get(target.name)?.map((run) => run.windowUs)],
    ] as const;
    for (const [runs, windows] of measured) {
      if (windows === undefined || windows.length === 0) continue;
      const lines = profileOf(target, windows);
      if (lines.length === 0) continue;
      log();
      log(`CPU profile of the ${target.label} service over its ${runs}`);
      for (const line of lines) log(`  ${line}`);
    }
  }
  if (config.writes) {
    if (!targets.some((target) => target.service !== undefined)) buildService();
    const { logLevel, postgresAdminUrl, seconds, cpuProfileDir } = config;
    await runWritesBench({ workDir, postgresAdminUrl, logLevel, seconds, log, progress, cpuProfileDir });
  }
  log();
  log("Goals");
  for (const line of verdicts) log(`  ${line}`);
  const noisy = [
    ...(headline?.runs.values() ?? []),
    ...distinct.values(),
    ...[...batches.values()].map((batch) => batch.runs),
  ]
    .flat()
    .filter(({ cpu }) => cpu.machine - cpu.server - (cpu.database ?? 0) - cpu.client > NOISY_REST_PERCENT);
  if (noisy.length > 0) {
    log(
      `WARNING: in ${noisy.length} runs other processes used more than ${NOISY_REST_PERCENT}% of a core: ` +
        "the machine was busy with other work; ratios are less trustworthy, run again",
    );
  }
  log();
  log(
    `done in ${((performance.now() - started) / 1000).toFixed(0)} s; load average ${loadavg()
      .map((value) => value.toFixed(2))
      .join(" ")}`,
  );
  const failures = problems(headline, distinct, batches, extras);
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
