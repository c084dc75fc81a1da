// A real PgBouncer (Debian's `pgbouncer`) in front of the test PostgreSQL, in transaction pooling
// with its default configuration otherwise (no ignore_startup_parameters, default pool sizes):
// the way many replicas usually share one PostgreSQL. Its configuration lives in a temporary
// directory and it listens on a free port; suites that need it are skipped with a message when
// it is not installed.

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import { connect as netConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe } from "vitest";
import { freePort } from "./ports.js";

/** Read here, not imported from databases.ts, which imports this module. */
const postgresAdminUrl: string | undefined = process.env.TEST_DATABASE_URL || undefined;

const CANDIDATES = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"];

function findPgBouncer(): string | undefined {
  const found = CANDIDATES.find((path) => existsSync(path));
  if (found !== undefined) return found;
  try {
    return execFileSync("sh", ["-c", "command -v pgbouncer"], { encoding: "utf8" }).trim() || undefined;
  } catch {
    return undefined;
  }
}

export const pgbouncerBinary = findPgBouncer();
/** Whether PgBouncer suites (and the e2e suites' PgBouncer database) run here. */
export const pgbouncerEnabled = postgresAdminUrl !== undefined && pgbouncerBinary !== undefined;

export const PGBOUNCER_SKIP_MESSAGE =
  "PgBouncer suites skipped: they need TEST_DATABASE_URL and the pgbouncer binary (apt-get install pgbouncer)";

/** A suite that runs through PgBouncer; skipped with a message without it or without PostgreSQL. */
export function describePgBouncer(title: string, body: () => void): void {
  if (!pgbouncerEnabled) console.info(PGBOUNCER_SKIP_MESSAGE);
  describe.skipIf(!pgbouncerEnabled)(title, body);
}

export interface PgBouncer {
  readonly port: number;
  /** `url` (a postgres:// URL of the test server) rewritten to go through this PgBouncer. */
  through(url: string): string;
  /** Everything PgBouncer logged. */
  log(): string;
  stop(): Promise<void>;
}

/** Starts PgBouncer in front of TEST_DATABASE_URL's server; every database is reachable through it. */
export async function startPgBouncer(): Promise<PgBouncer> {
  if (pgbouncerBinary === undefined || postgresAdminUrl === undefined) throw new Error(PGBOUNCER_SKIP_MESSAGE);
  const target = new URL(postgresAdminUrl);
  const directory = await mkdtemp(join(tmpdir(), "connections-pgbouncer-"));
  // PgBouncer refuses to run as root: as root, it drops to the postgres user, which reads this.
  await chmod(directory, 0o755);
  const port = await freePort();
  const config = join(directory, "pgbouncer.ini");
  await writeFile(
    config,
    [
      "[databases]",
      `* = host=${target.hostname} port=${target.port || 5432} user=${decodeURIComponent(target.username || "postgres")}`,
      "[pgbouncer]",
      "listen_addr = 127.0.0.1",
      `listen_port = ${port}`,
      "unix_socket_dir =",
      "auth_type = any",
      "pool_mode = transaction",
      "",
    ].join("\n"),
  );
  const asRoot = process.getuid?.() === 0;
  const child: ChildProcess = spawn(pgbouncerBinary, [...(asRoot ? ["-u", "postgres"] : []), config], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  child.stdout?.on("data", (chunk: Buffer) => {
    log += chunk.toString();
  });
  child.stderr?.on("data", (chunk: Buffer) => {
    log += chunk.toString();
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  try {
    await untilListening(port, exited);
  } catch (error) {
    child.kill("SIGKILL");
    await rm(directory, { recursive: true, force: true });
    throw new Error(`pgbouncer did not start: ${String(error)}\n${log}`);
  }
  return {
    port,
    through(url) {
      const rewritten = new URL(url);
      rewritten.host = `127.0.0.1:${port}`;
      return rewritten.toString();
    },
    log: () => log,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      await exited;
      await rm(directory, { recursive: true, force: true });
    },
  };
}

async function untilListening(port: number, exited: Promise<void>): Promise<void> {
  let gone = false;
  void exited.then(() => {
    gone = true;
  });
  for (let attempt = 0; attempt < 100; attempt++) {
    if (gone) throw new Error("pgbouncer exited");
    const open = await new Promise<boolean>((resolve) => {
      const socket = netConnect(port, "127.0.0.1");
      socket.once("connect", () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (open) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`nothing listens on ${port}`);
}
