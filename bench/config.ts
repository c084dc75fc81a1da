// What `npm run bench` measures and against which goals: every BENCH_* setting read from the
// environment, and the goals as data. Both live here so a run's shape and what it is judged by are
// read in one place; a new section adds its settings to `config` and its goals to `GOALS`.

/** A whole-number BENCH_* setting, or `fallback` when it is not set. */
export function integer(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) throw new Error(`${name}=${raw}: expected a whole number`);
  return value;
}

export const config = {
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
  /** The allocator of every server: the image's (jemalloc, bench/allocator.ts), or glibc's malloc with BENCH_ALLOCATOR=glibc. */
  allocator: process.env.BENCH_ALLOCATOR === "glibc" ? ("glibc" as const) : ("image" as const),
  overload: process.env.BENCH_OVERLOAD !== "off",
  overloadSeconds: {
    seconds: integer("BENCH_OVERLOAD_SECONDS", 20),
    capacitySeconds: integer("BENCH_OVERLOAD_CAPACITY_SECONDS", 5),
  },
  targets: new Set((process.env.BENCH_TARGETS || "ceiling,grpc-js,sqlite,postgres,scale").split(",")),
  /** The writes section (bench/writes.ts); BENCH_TARGETS=none with BENCH_WRITES=on runs it alone. */
  writes: process.env.BENCH_WRITES !== "off",
  /** The replicas of its PostgreSQL deployment (three by default: the goal is for three). */
  writesReplicas: integer("BENCH_WRITES_REPLICAS", 3),
  /** Its deployments: BENCH_WRITES=sqlite or =postgres runs only that one (for profiling one of them). */
  writesDeployments: new Set(
    process.env.BENCH_WRITES === "sqlite" || process.env.BENCH_WRITES === "postgres"
      ? [process.env.BENCH_WRITES]
      : ["sqlite", "postgres"],
  ),
};

/** A goal on a ratio of figures taken in the same run: met when the ratio is at least, or at most, this. */
export type Goal = { readonly atLeast: number } | { readonly atMost: number };

/** The goals, as ratios of figures taken in the same round. */
export const GOALS = {
  sqliteVsGrpcJs: { atLeast: 1.0 },
  sqliteVsCeiling: { atLeast: 0.5 },
  postgresVsGrpcJs: { atLeast: 0.65 },
  distinctIdsVsGrpcJs: { atLeast: 0.9 },
  /** BatchCheckConnection's checks per second over CheckConnection's, same pool and client. */
  batchVsSingle: { atLeast: 5 },
  /** The service's p99 over grpc-js's at the same concurrency. */
  p99VsGrpcJs: { atMost: 1.0 },
} as const satisfies Record<string, Goal>;

/** CPU used by processes other than the ones under test above which a window is called noisy. */
export const NOISY_REST_PERCENT = 25;
