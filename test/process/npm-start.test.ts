// `npm start` as an operator or a container runs it: npm builds, then runs node on the built code
// with nothing in between that would swallow a signal. SIGTERM to npm alone (what a container
// runtime sends to PID 1) and SIGTERM to the whole process group (Ctrl-C, `kill -- -PGID`) must
// both drain once and exit 0; the copy of the signal that npm forwards is not a second signal.

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { afterEach, describe, expect, it } from "vitest";
import { untilLogged } from "../support/process.js";

const ROOT = new URL("../..", import.meta.url).pathname;

interface NpmStart {
  readonly npm: ChildProcess;
  readonly logs: Record<string, unknown>[];
  readonly exited: Promise<number | null>;
  readonly servicePid: number;
}

async function npmStart(): Promise<NpmStart> {
  const npm = spawn("npm", ["start", "--silent"], {
    cwd: ROOT,
    env: { ...process.env, DATABASE_URL: "sqlite::memory:", PORT: "0", ADMIN_PORT: "off", LOG_LEVEL: "debug" },
    stdio: ["ignore", "pipe", "pipe"],
    // Its own process group, as a shell gives a foreground job, so the test can signal the group.
    detached: true,
  });
  const logs: Record<string, unknown>[] = [];
  const exited = new Promise<number | null>((resolve) => npm.once("exit", (code) => resolve(code)));
  const serving = await untilLogged(
    npm,
    logs,
    exited,
    (entry) => entry.msg === "serving gRPC, gRPC-Web and Connect",
    120_000,
  );
  const servicePid = serving.pid as number;
  return { npm, logs, exited, servicePid };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function waitUntilGone(pid: number): Promise<boolean> {
  for (let attempt = 0; attempt < 200; attempt++) {
    if (!alive(pid)) return true;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return false;
}

describe("npm start", () => {
  const started: NpmStart[] = [];
  afterEach(() => {
    for (const { npm, servicePid } of started.splice(0)) {
      for (const pid of [servicePid, npm.pid]) {
        if (pid !== undefined && alive(pid)) process.kill(pid, "SIGKILL");
      }
    }
  });

  /** Signals npm (or its whole group) and expects one drain, a clean exit and no orphan. */
  async function expectOneCleanStop(run: NpmStart, group: boolean): Promise<void> {
    const pid = run.npm.pid as number;
    process.kill(group ? -pid : pid, "SIGTERM");
    expect(await run.exited).toBe(0);
    expect(await waitUntilGone(run.servicePid), "the service process is gone, not orphaned").toBe(true);
    const messages = run.logs.map((line) => line.msg);
    expect(messages.filter((msg) => msg === "shutting down")).toHaveLength(1);
    expect(messages).toContain("stopped");
    expect(messages.some((msg) => typeof msg === "string" && msg.startsWith("second signal"))).toBe(false);
  }

  // Each `npm start` builds first: the first test also looks at what runs, rather than start a third.
  it("runs node directly on the built code (no shell or tsx between npm and the service), and SIGTERM to npm alone (a container runtime's PID 1) drains once and exits 0", async () => {
    const run = await npmStart();
    started.push(run);
    const parent = Number(
      execFileSync("ps", ["-o", "ppid=", "-p", String(run.servicePid)])
        .toString()
        .trim(),
    );
    expect(parent, "the service's parent is npm itself").toBe(run.npm.pid);
    const command = execFileSync("ps", ["-o", "args=", "-p", String(run.servicePid)]).toString();
    expect(command).toMatch(/node .*dist\/src\/main\.js/);
    await expectOneCleanStop(run, false);
  }, 180_000);

  it("SIGTERM to the whole process group (Ctrl-C, kill -- -PGID) drains once and exits 0", async () => {
    const run = await npmStart();
    started.push(run);
    await expectOneCleanStop(run, true);
  }, 180_000);
});
