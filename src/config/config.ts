// Configuration from the environment, validated in one place so that a mistake stops the
// service at start with every problem named, instead of surfacing later as odd behaviour.

import { dirname, join } from "node:path";
import { type AdmissionSettings, DEFAULT_ADMISSION_SETTINGS } from "../api/rpc/admission.js";
import { DEFAULT_HEAP_GROWING_PERCENT } from "../runtime/heap-growth.js";
import { DEFAULT_CHECK_CACHE_ENTRIES } from "../store/check-reader.js";
import { MAX_SQLITE_MMAP_MIB } from "../store/open.js";
import { DEFAULT_SCHEMA_AHEAD_LIMIT } from "../store/schema-version.js";
import { DEFAULT_TRANSPORT_LIMITS as LIMITS, type TransportLimits } from "../transport/limits.js";

export interface Config {
  readonly port: number;
  readonly host: string;
  /** Prometheus metrics; 0 picks a free port, undefined when ADMIN_PORT is "off". */
  readonly adminPort: number | undefined;
  readonly databaseUrl: string;
  readonly databasePoolSize: number;
  readonly databaseStatementTimeoutMs: number;
  /** PostgreSQL: where migrations run (e.g. straight to PostgreSQL when DATABASE_URL is PgBouncer). */
  readonly databaseMigrationUrl: string | undefined;
  /** PostgreSQL: a session connection for LISTEN (the change feed's wake-ups). */
  readonly databaseListenUrl: string | undefined;
  /** Whether starting to serve applies pending migrations (else they are a separate `migrate` step). */
  readonly migrateOnStart: boolean;
  /** How many migrations unknown to this release the schema may be ahead by (a rolling deploy's window). */
  readonly schemaAheadLimit: number;
  /** SQLite: where SIGUSR2 writes an online backup; undefined for PostgreSQL and in-memory SQLite. */
  readonly backupDir: string | undefined;
  readonly callersFile: string | undefined;
  /** The OTEL_* variables when traces are to be exported; undefined means no tracing at all. */
  readonly tracing: Readonly<Record<string, string>> | undefined;
  /** PEM files; when set, the port serves TLS only. */
  readonly tls: TlsFiles | undefined;
  readonly logLevel: string;
  readonly production: boolean;
  readonly shutdownGraceMs: number;
  readonly maxRequestBytes: number;
  readonly maxDeadlineMs: number;
  /** What one client may hold of the port: timeouts and HTTP/2 limits (see src/transport/limits.ts). */
  readonly limits: TransportLimits;
  /** SQLite: Connections the CheckConnection cache holds (about the least recently checked leave first). */
  readonly checkCacheEntries: number;
  /** SQLite: MiB of the file read through a memory map (0: read() only). */
  readonly sqliteMmapMib: number;
  /** Admission control of unary calls; undefined when ADMISSION_MAX_IN_FLIGHT is 0 (off). */
  readonly admission: AdmissionSettings | undefined;
  /** WatchConnectionEvents streams per replica. */
  readonly maxWatchers: number;
  /** The longest a watch stream goes without a message (a heartbeat with the cursor). */
  readonly watchHeartbeatMs: number;
  /** How often the change feed polls the database besides being woken by writes and NOTIFY. */
  readonly watchPollIntervalMs: number;
  /** How long the answers of idempotent writes are kept for replay (IDEMPOTENCY_RETENTION). */
  readonly idempotencyRetentionMs: number;
  /** V8's old generation may grow by this percent of its live bytes between full collections; 0: V8 chooses. */
  readonly heapGrowingPercent: number;
}

export interface TlsFiles {
  readonly certFile: string;
  readonly keyFile: string;
  /** Client certificates are required and verified against this CA (mTLS) when set. */
  readonly clientCaFile: string | undefined;
}

const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];

export class ConfigError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(`invalid configuration:\n  ${problems.join("\n  ")}`);
    this.name = "ConfigError";
  }
}

/**
 * `serving: false` is for the subcommands (migrate) that only touch the database: they need no
 * callers file, even in production.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, { serving = true } = {}): Config {
  const problems: string[] = [];

  const integer = (name: string, fallback: number, min: number, max: number): number => {
    const raw = env[name];
    if (raw === undefined || raw === "") return fallback;
    const value = Number(raw);
    if (!Number.isInteger(value) || value < min || value > max) {
      problems.push(`${name}=${raw}: expected a whole number from ${min} to ${max}`);
      return fallback;
    }
    return value;
  };

  const databaseUrl = env.DATABASE_URL || "sqlite:data/connections.db";
  if (!/^(sqlite:.+|postgres(ql)?:\/\/.+)$/.test(databaseUrl)) {
    problems.push("DATABASE_URL: expected sqlite:<path>, sqlite::memory: or postgres://...");
  }
  const postgresUrl = (name: string): string | undefined => {
    const url = env[name] || undefined;
    if (url !== undefined && !/^postgres(ql)?:\/\/.+$/.test(url)) problems.push(`${name}: expected postgres://...`);
    if (url !== undefined && databaseUrl.startsWith("sqlite:")) problems.push(`${name} is for PostgreSQL only`);
    return url;
  };
  const logLevel = env.LOG_LEVEL || "info";
  if (!LOG_LEVELS.includes(logLevel)) problems.push(`LOG_LEVEL=${logLevel}: expected one of ${LOG_LEVELS.join(", ")}`);
  const production = env.NODE_ENV === "production";
  const callersFile = env.CALLERS_FILE || undefined;
  if (serving && production && callersFile === undefined) {
    problems.push("CALLERS_FILE is required when NODE_ENV=production (dev tokens are refused there)");
  }

  const certFile = env.TLS_CERT_FILE || undefined;
  const keyFile = env.TLS_KEY_FILE || undefined;
  const clientCaFile = env.TLS_CLIENT_CA_FILE || undefined;
  if ((certFile === undefined) !== (keyFile === undefined)) {
    problems.push("TLS_CERT_FILE and TLS_KEY_FILE: set both (TLS only) or neither (cleartext)");
  }
  if (clientCaFile !== undefined && certFile === undefined) {
    problems.push("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE (mTLS is TLS with client certificates)");
  }

  const migrateOnStartRaw = env.MIGRATE_ON_START || undefined;
  if (migrateOnStartRaw !== undefined && !["true", "false"].includes(migrateOnStartRaw)) {
    problems.push(`MIGRATE_ON_START=${migrateOnStartRaw}: expected true or false`);
  }
  // SQLite has one process per file and dev has one replica: migrating on start is safe there.
  const migrateOnStart =
    migrateOnStartRaw === undefined ? databaseUrl.startsWith("sqlite:") || !production : migrateOnStartRaw === "true";

  const tracing = tracingEnv(env);
  const otlpEndpoint = tracing?.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || tracing?.OTEL_EXPORTER_OTLP_ENDPOINT;
  if (otlpEndpoint !== undefined && !URL.canParse(otlpEndpoint)) {
    problems.push("OTEL_EXPORTER_OTLP_ENDPOINT: expected a URL such as http://collector:4318");
  }

  const config: Config = {
    port: integer("PORT", 8080, 0, 65535),
    host: env.HOST || "127.0.0.1",
    adminPort: env.ADMIN_PORT === "off" ? undefined : integer("ADMIN_PORT", 9090, 0, 65535),
    databaseUrl,
    databasePoolSize: integer("DATABASE_POOL_SIZE", 10, 1, 1000),
    databaseStatementTimeoutMs: integer("DATABASE_STATEMENT_TIMEOUT_MS", 5000, 100, 600_000),
    databaseMigrationUrl: postgresUrl("DATABASE_MIGRATION_URL"),
    databaseListenUrl: postgresUrl("DATABASE_LISTEN_URL"),
    migrateOnStart,
    schemaAheadLimit: integer("SCHEMA_AHEAD_LIMIT", DEFAULT_SCHEMA_AHEAD_LIMIT, 0, 1000),
    backupDir: backupDir(env, databaseUrl, problems),
    callersFile,
    tracing,
    tls: certFile !== undefined && keyFile !== undefined ? { certFile, keyFile, clientCaFile } : undefined,
    logLevel,
    production,
    shutdownGraceMs: integer("SHUTDOWN_GRACE_MS", 10_000, 0, 600_000),
    maxRequestBytes: integer("MAX_REQUEST_BYTES", 256 * 1024, 1024, 64 * 1024 * 1024),
    maxDeadlineMs: integer("MAX_DEADLINE_MS", 30_000, 100, 3_600_000),
    limits: {
      firstBytesTimeoutMs: integer("FIRST_BYTES_TIMEOUT_MS", LIMITS.firstBytesTimeoutMs, 10, 600_000),
      bodyReadTimeoutMs: integer("BODY_READ_TIMEOUT_MS", LIMITS.bodyReadTimeoutMs, 10, 3_600_000),
      http1HeadersTimeoutMs: integer("HTTP1_HEADERS_TIMEOUT_MS", LIMITS.http1HeadersTimeoutMs, 10, 600_000),
      http1RequestTimeoutMs: integer("HTTP1_REQUEST_TIMEOUT_MS", LIMITS.http1RequestTimeoutMs, 10, 3_600_000),
      http1KeepAliveTimeoutMs: integer("HTTP1_KEEP_ALIVE_TIMEOUT_MS", LIMITS.http1KeepAliveTimeoutMs, 10, 3_600_000),
      http2IdleTimeoutMs: integer("HTTP2_IDLE_TIMEOUT_MS", LIMITS.http2IdleTimeoutMs, 10, 86_400_000),
      http2KeepaliveIntervalMs: integer("HTTP2_KEEPALIVE_INTERVAL_MS", LIMITS.http2KeepaliveIntervalMs, 10, 86_400_000),
      http2KeepaliveTimeoutMs: integer("HTTP2_KEEPALIVE_TIMEOUT_MS", LIMITS.http2KeepaliveTimeoutMs, 10, 600_000),
      maxConnectionAgeMs: integer("MAX_CONNECTION_AGE_MS", LIMITS.maxConnectionAgeMs, 10, 604_800_000),
      maxConnectionAgeGraceMs: integer("MAX_CONNECTION_AGE_GRACE_MS", LIMITS.maxConnectionAgeGraceMs, 0, 3_600_000),
      http2MaxConcurrentStreams: integer(
        "HTTP2_MAX_CONCURRENT_STREAMS",
        LIMITS.http2MaxConcurrentStreams,
        1,
        1_000_000,
      ),
      maxHeaderListBytes: integer("MAX_HEADER_LIST_BYTES", LIMITS.maxHeaderListBytes, 1024, 1_048_576),
      maxHealthWatchers: integer("MAX_HEALTH_WATCHERS", LIMITS.maxHealthWatchers, 0, 1_000_000),
      maxReflectionStreams: integer("MAX_REFLECTION_STREAMS", LIMITS.maxReflectionStreams, 0, 1_000_000),
      reflectionIdleTimeoutMs: integer("REFLECTION_IDLE_TIMEOUT_MS", LIMITS.reflectionIdleTimeoutMs, 10, 3_600_000),
      maxHttp2Connections: integer("MAX_HTTP2_CONNECTIONS", LIMITS.maxHttp2Connections, 1, 1_000_000),
    },
    checkCacheEntries: integer("CHECK_CACHE_ENTRIES", DEFAULT_CHECK_CACHE_ENTRIES, 1, 100_000_000),
    sqliteMmapMib: integer("SQLITE_MMAP_MIB", MAX_SQLITE_MMAP_MIB, 0, MAX_SQLITE_MMAP_MIB),
    admission: admissionSettings(integer),
    maxWatchers: integer("MAX_WATCHERS", 1000, 0, 1_000_000),
    watchHeartbeatMs: integer("WATCH_HEARTBEAT_MS", 15_000, 10, 15_000),
    watchPollIntervalMs: integer("WATCH_POLL_INTERVAL_MS", 1000, 10, 60_000),
    idempotencyRetentionMs: idempotencyRetention(env.IDEMPOTENCY_RETENTION, problems),
    heapGrowingPercent: integer("HEAP_GROWING_PERCENT", DEFAULT_HEAP_GROWING_PERCENT, 0, 1000),
  };
  const { limits } = config;
  if (limits.http1HeadersTimeoutMs > limits.http1RequestTimeoutMs) {
    problems.push("HTTP1_HEADERS_TIMEOUT_MS must not be larger than HTTP1_REQUEST_TIMEOUT_MS");
  }
  const { admission } = config;
  if (admission !== undefined && admission.minInFlight > admission.maxInFlight) {
    problems.push("ADMISSION_MIN_IN_FLIGHT must not be larger than ADMISSION_MAX_IN_FLIGHT");
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return config;
}

/** BACKUP_DIR, or `backups/` beside an SQLite file; PostgreSQL has its own tools. */
function backupDir(env: NodeJS.ProcessEnv, databaseUrl: string, problems: string[]): string | undefined {
  const sqlitePath = databaseUrl.startsWith("sqlite:") ? databaseUrl.slice("sqlite:".length) : undefined;
  if (env.BACKUP_DIR) {
    if (sqlitePath === undefined)
      problems.push("BACKUP_DIR is for SQLite (back PostgreSQL up with pg_dump or pg_basebackup)");
    return env.BACKUP_DIR;
  }
  return sqlitePath === undefined || sqlitePath === ":memory:" ? undefined : join(dirname(sqlitePath), "backups");
}

type IntegerReader = (name: string, fallback: number, min: number, max: number) => number;

function admissionSettings(integer: IntegerReader): AdmissionSettings | undefined {
  const defaults = DEFAULT_ADMISSION_SETTINGS;
  const maxInFlight = integer("ADMISSION_MAX_IN_FLIGHT", defaults.maxInFlight, 0, 1_000_000);
  const settings: AdmissionSettings = {
    maxInFlight,
    minInFlight: integer("ADMISSION_MIN_IN_FLIGHT", defaults.minInFlight, 1, 1_000_000),
    targetDelayMs: integer("ADMISSION_TARGET_DELAY_MS", defaults.targetDelayMs, 1, 60_000),
    callerIdleMs: integer("ADMISSION_CALLER_IDLE_MS", defaults.callerIdleMs, 10, 3_600_000),
    pushbackMs: integer("ADMISSION_PUSHBACK_MS", defaults.pushbackMs, 0, 600_000),
    maxQueued: integer("ADMISSION_MAX_QUEUED", defaults.maxQueued, 0, 1_000_000),
  };
  return maxInFlight === 0 ? undefined : settings;
}

const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;
const DURATION_UNITS_MS: Readonly<Record<string, number>> = { s: 1000, m: 60_000, h: HOUR_MS, d: DAY_MS };
/** The contract promises replays for at least a day. */
const MIN_IDEMPOTENCY_RETENTION_MS = DAY_MS;

/** IDEMPOTENCY_RETENTION: a whole number and a unit (s, m, h, d), default 7d, at least 24h. */
function idempotencyRetention(raw: string | undefined, problems: string[]): number {
  const fallback = 7 * DAY_MS;
  if (raw === undefined || raw === "") return fallback;
  const match = /^(\d{1,9})([smhd])$/.exec(raw);
  const ms = match === null ? Number.NaN : Number(match[1]) * (DURATION_UNITS_MS[match[2] ?? ""] ?? Number.NaN);
  if (!(ms >= MIN_IDEMPOTENCY_RETENTION_MS)) {
    problems.push(
      `IDEMPOTENCY_RETENTION=${raw}: expected a duration of at least 24h, such as 24h, 36h or 7d (retries must replay for a day)`,
    );
    return fallback;
  }
  return ms;
}

/** The OTEL_* variables, when they ask for traces (an OTLP endpoint, and the SDK not disabled). */
function tracingEnv(env: NodeJS.ProcessEnv): Readonly<Record<string, string>> | undefined {
  if (env.OTEL_SDK_DISABLED === "true" || env.OTEL_TRACES_EXPORTER === "none") return undefined;
  if (!env.OTEL_EXPORTER_OTLP_ENDPOINT && !env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) return undefined;
  const picked: Record<string, string> = {};
  for (const [name, value] of Object.entries(env)) {
    if (name.startsWith("OTEL_") && value !== undefined) picked[name] = value;
  }
  return picked;
}
