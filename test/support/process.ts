// Starts the service as a real process (`node dist/src/main.js`), the way it runs in production,
// and learns its ports from its start-up log line.

import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";

const ROOT = new URL("../..", import.meta.url).pathname;

/**
 * The built entry point and health check, relative to the checkout. `npm test` builds them first
 * (test/support/build.ts); a process starts from them in a fraction of the CPU time that running
 * the sources through tsx takes.
 */
export const BUILT_MAIN = "dist/src/main.js";
export const BUILT_HEALTHCHECK = "dist/src/bin/healthcheck.js";
const BUILT_OPEN_STORE = "dist/src/store/open.js";

export interface ServiceProcess {
  readonly port: number;
  readonly adminPort: number | undefined;
  readonly child: ChildProcess;
  /** Every JSON log line so far. */
  readonly logs: Record<string, unknown>[];
  /** Sends the signal and resolves with the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  /** Resolves with the exit code once the process has exited. */
  readonly exited: Promise<number | null>;
}

/** `root`: the checkout to run, this one unless another release's (test/process/migrate.test.ts). */
export async function startServiceProcess(
  env: Record<string, string>,
  nodeOptions: readonly string[] = [],
  root = ROOT,
): Promise<ServiceProcess> {
  // Another release's checkout has no build: it runs from its sources.
  const entry = root === ROOT ? [BUILT_MAIN] : ["--import", "tsx", "src/main.ts"];
  const child = spawn(process.execPath, [...nodeOptions, ...entry], {
    cwd: root,
    env: { ...process.env, PORT: "0", ADMIN_PORT: "off", LOG_LEVEL: "info", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logs: Record<string, unknown>[] = [];
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const started = untilLogged(
    child,
    logs,
    exited,
    (entry) => typeof entry.port === "number" && entry.msg === "serving gRPC, gRPC-Web and Connect",
    30_000,
  );
  const ready = await started;
  return {
    port: ready.port as number,
    adminPort: typeof ready.adminPort === "number" ? ready.adminPort : undefined,
    child,
    logs,
    exited,
    stop(signal = "SIGTERM") {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

/**
 * Collects the child's JSON log lines into `logs` and resolves with the first that `ready`
 * accepts; rejects (with its stderr) when the child exits first or `timeoutMs` passes.
 */
export function untilLogged(
  child: ChildProcess,
  logs: Record<string, unknown>[],
  exited: Promise<number | null>,
  ready: (entry: Record<string, unknown>) => boolean,
  timeoutMs: number,
): Promise<Record<string, unknown>> {
  let stderr = "";
  child.stderr?.on("data", (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`service did not start in ${timeoutMs} ms:\n${stderr}`)),
      timeoutMs,
    );
    const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
    const drained = new Promise((resolve) => lines.once("close", resolve));
    lines.on("line", (line) => {
      let entry: Record<string, unknown>;
      try {
        entry = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return;
      }
      logs.push(entry);
      if (ready(entry)) {
        clearTimeout(timer);
        resolve(entry);
      }
    });
    exited.then(async (code) => {
      clearTimeout(timer);
      // A service that fails at start logs why on stdout (JSON), not stderr: its last lines, once
      // read (the exit can come before the pipe's last bytes), say it.
      await Promise.race([drained, new Promise((resolve) => setTimeout(resolve, 1_000).unref())]);
      const lastLogs = logs.slice(-5).map((entry) => JSON.stringify(entry));
      reject(new Error(`service exited with ${code} before serving:\n${stderr}${lastLogs.join("\n")}`));
    });
  });
}

/** Opens the store at `databaseUrl` in another process (as `uid` when given); its exit code and stderr. */
export function openStoreInChildProcess(
  databaseUrl: string,
  uid?: number,
): Promise<{ code: number | null; stderr: string }> {
  const script = `
    import { openStore } from "./${BUILT_OPEN_STORE}";
    try { const store = await openStore({ databaseUrl: process.env.URL }); await store.close(); }
    catch (error) { console.error(error.message); process.exit(3); }`;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
      cwd: ROOT,
      env: { ...process.env, URL: databaseUrl },
      stdio: ["ignore", "ignore", "pipe"],
      ...(uid === undefined ? {} : { uid, gid: uid }),
    });
    let stderr = "";
    child.stderr.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    child.once("error", reject);
    child.once("exit", (code) => resolve({ code, stderr }));
  });
}
