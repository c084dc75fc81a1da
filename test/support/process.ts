// Starts the service as a real process (`node --import tsx src/main.ts`), the way it runs in
// production, and learns its ports from its start-up log line.

import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";

const ROOT = new URL("../..", import.meta.url).pathname;

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

export async function startServiceProcess(
  env: Record<string, string>,
  nodeOptions: readonly string[] = [],
): Promise<ServiceProcess> {
  const child = spawn(process.execPath, ["--import", "tsx", ...nodeOptions, "src/main.ts"], {
    cwd: ROOT,
    env: { ...process.env, PORT: "0", ADMIN_PORT: "off", LOG_LEVEL: "info", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logs: Record<string, unknown>[] = [];
  let stderr = "";
  child.stderr?.on("data", (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));

  const started = new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`service did not start in 30 s:\n${stderr}`)), 30_000);
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).on("line", (line) => {
      let entry: Record<string, unknown>;
      try {
        entry = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return;
      }
      logs.push(entry);
      if (typeof entry.port === "number" && entry.msg === "serving gRPC, gRPC-Web and Connect") {
        clearTimeout(timer);
        resolve(entry);
      }
    });
    exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`service exited with ${code} before serving:\n${stderr}`));
    });
  });
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
