// Child processes of the benchmark, their resource figures from /proc, and the clean-up that runs
// at the end whatever happened (error, Ctrl-C, SIGTERM).

import { type ChildProcess, execFileSync, fork, spawn } from "node:child_process";
import { closeSync, openSync, readdirSync, readFileSync } from "node:fs";
import http2 from "node:http2";
import { connect, createServer } from "node:net";
import { createInterface } from "node:readline";
import { type Allocator, benchAllocator } from "./allocator.js";
import type { ClientMessage, ListResult, LoadResult, Plan } from "./workload.js";

export const ROOT = new URL("..", import.meta.url).pathname;

// ---------------------------------------------------------------------------------------------
// Clean-up: every resource registers how to release it; `cleanUp` releases them newest first.

const cleanups: { readonly name: string; readonly run: () => Promise<void> }[] = [];

/** Registers a release; the returned function runs it now (once) and forgets it. */
export function onCleanUp(name: string, run: () => Promise<void>): () => Promise<void> {
  const entry = { name, run };
  cleanups.push(entry);
  return async () => {
    const index = cleanups.indexOf(entry);
    if (index === -1) return;
    cleanups.splice(index, 1);
    await run();
  };
}

let cleaning: Promise<void> | undefined;

/** Releases everything registered; callers at the same time share one pass. */
export function cleanUp(): Promise<void> {
  cleaning ??= (async () => {
    while (cleanups.length > 0) {
      const entry = cleanups.pop();
      if (entry === undefined) break;
      try {
        await entry.run();
      } catch (error) {
        process.stderr.write(`clean-up of ${entry.name} failed: ${(error as Error).message}\n`);
      }
    }
    cleaning = undefined;
  })();
  return cleaning;
}

// ---------------------------------------------------------------------------------------------
// Processes

export interface Child {
  readonly pid: number;
  readonly child: ChildProcess;
  /** SIGTERM, then SIGKILL if it has not exited in time; resolves once it has exited. */
  stop(): Promise<void>;
}

function track(name: string, child: ChildProcess, stderr: () => string): Child {
  const pid = child.pid;
  if (pid === undefined) throw new Error(`${name} did not start`);
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once("exit", () => resolve());
  });
  const terminate = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => {
        process.stderr.write(`${name} did not stop on SIGTERM; killing it\n${stderr().slice(-2000)}`);
        child.kill("SIGKILL");
      }, 15_000);
      await exited;
      clearTimeout(timer);
    }
  };
  return { pid, child, stop: onCleanUp(name, terminate) };
}

function collect(child: ChildProcess): () => string {
  let text = "";
  child.stderr?.on("data", (chunk: Buffer) => {
    text = (text + chunk.toString()).slice(-20_000);
  });
  return () => text;
}

function failedToStart(name: string, child: ChildProcess, stderr: () => string): Promise<never> {
  return new Promise((_, reject) => {
    child.once("exit", (code, signal) => reject(new Error(`${name} exited (${code ?? signal}):\n${stderr()}`)));
  });
}

function timeout(name: string, ms: number, stderr: () => string): Promise<never> {
  return new Promise((_, reject) => {
    setTimeout(() => reject(new Error(`${name} did not start within ${ms / 1000} s:\n${stderr()}`)), ms).unref();
  });
}

let allocator: Allocator | undefined;

/** The allocator every server runs with (allocator.ts), chosen on first use. */
export function serverAllocator(progress: (line: string) => void = () => {}): Allocator {
  allocator ??= benchAllocator(progress);
  return allocator;
}

/** A bench server script (baseline-server.ts, ceiling-server.ts) that prints {"port": N}, on a free port. */
export async function startBenchServer(name: string, script: string): Promise<Child & { readonly port: number }> {
  const child = spawn(process.execPath, ["--import", "tsx", script], {
    cwd: ROOT,
    env: { ...process.env, ...serverAllocator().env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const stderr = collect(child);
  const tracked = track(name, child, stderr);
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
  const port = await Promise.race([
    new Promise<number>((resolve) =>
      lines.on("line", (line) => {
        const parsed = JSON.parse(line) as { port?: number };
        if (typeof parsed.port === "number") resolve(parsed.port);
      }),
    ),
    failedToStart(name, child, stderr),
    timeout(name, 30_000, stderr),
  ]);
  return { ...tracked, port };
}

export interface ServiceOptions {
  readonly databaseUrl: string;
  /** LOG_LEVEL; undefined leaves the service's default. */
  readonly logLevel: string | undefined;
  /** A CALLERS_FILE of sha256 digests: the service runs with NODE_ENV=production, as deployed. */
  readonly callersFile: string;
  /** Where stdout (the JSON log) goes: a file, so that writing it costs what it costs in production. */
  readonly logPath: string;
  /** The checkout whose build runs (another one, to compare two versions in one run); default this one. */
  readonly root?: string;
  /** When set, the service runs with --cpu-prof and writes its profile here on exit. */
  readonly cpuProfileDir: string | undefined;
  /** More environment (e.g. CHECK_CACHE_ENTRIES), over the defaults above. */
  readonly env?: Readonly<Record<string, string>>;
  /** Resolve once the port accepts connections (the default) or once health answers SERVING. */
  readonly until?: "listening" | "serving";
}

export interface StartedService extends Child {
  readonly port: number;
  /** Where its stdout (the log) goes. */
  readonly logPath: string;
  /** From spawning the process to what `until` waited for. */
  readonly readyMs: number;
  /** CPU seconds the process had used by then. */
  readonly readyCpuSeconds: number;
}

/**
 * `npm run build` in a checkout: the service runs as `npm start` runs it, on the JavaScript that
 * tsc emitted (tsx's own transform, which adds a helper call to every function it names, is for
 * development only).
 */
export function buildService(root = ROOT): void {
  execFileSync("npm", ["run", "--silent", "build"], { cwd: root, stdio: ["ignore", "ignore", "inherit"] });
}

/** The service as production runs it (NODE_ENV=production, a callers file, built), on a port it picks. */
export async function startService(options: ServiceOptions): Promise<StartedService> {
  // A port picked here rather than PORT=0: above LOG_LEVEL=info the service logs no start line to read it from.
  const port = await freePort();
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PORT: String(port),
    HOST: "127.0.0.1",
    DATABASE_URL: options.databaseUrl,
    NODE_ENV: "production",
    CALLERS_FILE: options.callersFile,
    // Metrics on, as deployed (a free port: nothing scrapes it here).
    ADMIN_PORT: "0",
    ...serverAllocator().env,
    ...options.env,
  };
  if (options.logLevel === undefined) delete env.LOG_LEVEL;
  else env.LOG_LEVEL = options.logLevel;
  const profiling =
    options.cpuProfileDir === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${options.cpuProfileDir}`];
  const logFd = openSync(options.logPath, "w");
  let child: ChildProcess;
  const spawned = performance.now();
  try {
    child = spawn(process.execPath, [...profiling, "dist/src/main.js"], {
      cwd: options.root ?? ROOT,
      env,
      stdio: ["ignore", logFd, "pipe"],
    });
  } finally {
    closeSync(logFd);
  }
  const stderr = collect(child);
  const tracked = track("service", child, stderr);
  await Promise.race([
    options.until === "serving" ? waitForServing(port) : waitForListening(port),
    failedToStart("service", child, stderr),
    timeout("service", 60_000, () => `${stderr()}\n${readFileSync(options.logPath, "utf8").slice(-4000)}`),
  ]);
  return {
    ...tracked,
    port,
    logPath: options.logPath,
    readyMs: performance.now() - spawned,
    readyCpuSeconds: processCpuSeconds(tracked.pid),
  };
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  if (address === null || typeof address === "string") throw new Error("no free port");
  return address.port;
}

/** How often a starting service is asked whether it is up. */
const START_POLL_MS = 10;

/** Polls until the port accepts a connection: the service listens once it is ready to serve. */
async function waitForListening(port: number): Promise<void> {
  for (;;) {
    const accepted = await new Promise<boolean>((resolve) => {
      const socket = connect(port, "127.0.0.1");
      socket.once("connect", () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (accepted) return;
    await new Promise((resolve) => setTimeout(resolve, START_POLL_MS));
  }
}

/** grpc.health.v1.Health/Check of the whole server (service ""): SERVING is status 1. */
const HEALTH_CHECK = { path: "/grpc.health.v1.Health/Check", emptyRequest: Buffer.alloc(5), serving: [0x08, 0x01] };

/** Polls until the port answers a health check with SERVING. */
async function waitForServing(port: number): Promise<void> {
  await waitForListening(port);
  const session = http2.connect(`http://127.0.0.1:${port}`);
  session.on("error", () => {});
  try {
    for (;;) {
      const answer = await new Promise<Buffer>((resolve) => {
        const chunks: Buffer[] = [];
        const stream = session.request({
          ":method": "POST",
          ":path": HEALTH_CHECK.path,
          "content-type": "application/grpc",
          te: "trailers",
        });
        stream.on("data", (chunk: Buffer) => chunks.push(chunk));
        stream.on("error", () => {});
        stream.on("close", () => resolve(Buffer.concat(chunks)));
        stream.end(HEALTH_CHECK.emptyRequest);
      });
      // The framed HealthCheckResponse: a 5-byte prefix, then field 1 (status) as a varint.
      if (answer.subarray(5).equals(Buffer.from(HEALTH_CHECK.serving))) return;
      await new Promise((resolve) => setTimeout(resolve, START_POLL_MS));
    }
  } finally {
    session.close();
  }
}

export interface ClientRun<R> {
  readonly result: R;
  /** process.hrtime (CLOCK_MONOTONIC) in microseconds when the measured window began and ended. */
  readonly windowUs: readonly [number, number];
}

/**
 * Runs the load client on `planPath` in its own process; `onWindow` is called when its measured
 * window starts and ends (to sample the other processes' CPU time).
 */
export async function runClient<P extends Plan>(
  planPath: string,
  onWindow: (edge: "start" | "end") => void,
): Promise<ClientRun<P extends { kind: "load" } ? LoadResult : ListResult>> {
  const child = fork(`${ROOT}bench/load-client.ts`, [planPath], {
    cwd: ROOT,
    execArgv: ["--import", "tsx"],
    stdio: ["ignore", "inherit", "pipe", "ipc"],
  });
  const stderr = collect(child);
  const tracked = track("load client", child, stderr);
  const windowUs: [number, number] = [0, 0];
  const nowUs = () => Number(process.hrtime.bigint() / 1000n);
  try {
    const result = await new Promise<LoadResult | ListResult>((resolve, reject) => {
      child.on("message", (message: ClientMessage) => {
        if (message.type === "measure-start") {
          windowUs[0] = nowUs();
          onWindow("start");
        } else if (message.type === "measure-end") {
          windowUs[1] = nowUs();
          onWindow("end");
        } else {
          resolve(message.result);
        }
      });
      child.once("exit", (code) => reject(new Error(`load client exited (${code}) without a result:\n${stderr()}`)));
    });
    return { result: result as P extends { kind: "load" } ? LoadResult : ListResult, windowUs };
  } finally {
    await tracked.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// Figures from /proc

const CLOCK_TICKS_PER_SECOND = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/**
 * A field of /proc/<pid>/status in MiB (e.g. VmHWM, the peak resident set). RssAnon leaves out
 * the pages of files the process maps (SQLite's memory-mapped database file).
 */
export function statusMiB(pid: number, field: "VmHWM" | "VmRSS" | "RssAnon"): number {
  const match = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return match?.[1] === undefined ? Number.NaN : Number(match[1]) / 1024;
}

/** CPU seconds (user + system) a process has used so far. */
export function processCpuSeconds(pid: number): number {
  // Fields after the command name (which may hold spaces), counted from field 3: utime is 14, stime 15.
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
}

/** CPU seconds (user + system) of this process's children that have ended and been waited for. */
export function endedChildrenCpuSeconds(): number {
  // cutime and cstime are fields 16 and 17.
  const stat = readFileSync("/proc/self/stat", "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[13]) + Number(fields[14])) / CLOCK_TICKS_PER_SECOND;
}

/**
 * A process's read and write system calls so far (/proc/<pid>/io, every thread) and its main
 * thread's voluntary context switches (each a wait for the next event: an event loop's wake-ups).
 */
export function processSystemCalls(pid: number): { reads: number; writes: number; wakeUps: number } {
  const io = readFileSync(`/proc/${pid}/io`, "utf8");
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const field = (text: string, name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)`, "m").exec(text)?.[1]);
  return {
    reads: field(io, "syscr"),
    writes: field(io, "syscw"),
    wakeUps: field(status, "voluntary_ctxt_switches"),
  };
}

/** CPU seconds used so far by each running process whose command is `command` (e.g. "postgres"), by pid. */
export function cpuSecondsOfProcessesNamed(command: string): Map<number, number> {
  const used = new Map<number, number>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/comm`, "utf8").trim() === command)
        used.set(Number(entry), processCpuSeconds(Number(entry)));
    } catch {
      // Exited while the list was read.
    }
  }
  return used;
}

/** Busy and total CPU seconds of the whole machine so far (all cores). */
export function machineCpuSeconds(): { busy: number; total: number } {
  const line = readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "";
  const values = line.trim().split(/\s+/).slice(1).map(Number);
  const total = values.reduce((sum, value) => sum + value, 0);
  const idle = (values[3] ?? 0) + (values[4] ?? 0);
  return { busy: (total - idle) / CLOCK_TICKS_PER_SECOND, total: total / CLOCK_TICKS_PER_SECOND };
}
