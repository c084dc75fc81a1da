// Configuration from the environment, validated in one place so that a mistake stops the
// service at start with every problem named, instead of surfacing later as odd behaviour.

export interface Config {
  readonly port: number;
  readonly host: string;
  /** Prometheus metrics; 0 picks a free port, undefined when ADMIN_PORT is "off". */
  readonly adminPort: number | undefined;
  readonly databaseUrl: string;
  readonly databasePoolSize: number;
  readonly databaseStatementTimeoutMs: number;
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

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
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
  const logLevel = env.LOG_LEVEL || "info";
  if (!LOG_LEVELS.includes(logLevel)) problems.push(`LOG_LEVEL=${logLevel}: expected one of ${LOG_LEVELS.join(", ")}`);
  const production = env.NODE_ENV === "production";
  const callersFile = env.CALLERS_FILE || undefined;
  if (production && callersFile === undefined) {
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
    callersFile,
    tracing,
    tls: certFile !== undefined && keyFile !== undefined ? { certFile, keyFile, clientCaFile } : undefined,
    logLevel,
    production,
    shutdownGraceMs: integer("SHUTDOWN_GRACE_MS", 10_000, 0, 600_000),
    maxRequestBytes: integer("MAX_REQUEST_BYTES", 256 * 1024, 1024, 64 * 1024 * 1024),
    maxDeadlineMs: integer("MAX_DEADLINE_MS", 30_000, 100, 3_600_000),
  };
  if (problems.length > 0) throw new ConfigError(problems);
  return config;
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
