// A crash (an exception no one caught, a rejection no one handled) is logged with its request id,
// drains like SIGTERM (health NOT_SERVING, in-flight calls finish, the database closes) and exits
// non-zero, so that the supervisor restarts the process and the crash is visible. A signal that
// arrives while the process is already exiting (its log closing) changes nothing.

import { describe, expect, it } from "vitest";
import { startServiceProcess } from "../support/process.js";

describe("crash handlers", () => {
  it.each([
    { kind: "exception", busyThreadPool: false },
    { kind: "rejection", busyThreadPool: false },
    // The log line of the crash is still being written on libuv's thread pool when the drain ends.
    { kind: "exception", busyThreadPool: true },
  ])(
    "an unhandled $kind is logged, drained and exits 1 (thread pool busy: $busyThreadPool)",
    async ({ kind, busyThreadPool }) => {
      const env = { DATABASE_URL: "sqlite::memory:", CRASH_KIND: kind };
      const busy = { UV_THREADPOOL_SIZE: "1", CRASH_BUSY_THREAD_POOL: "1" };
      // tsx only for the preloaded TypeScript file; the service is the built one.
      const service = await startServiceProcess(busyThreadPool ? { ...env, ...busy } : env, [
        "--import",
        "tsx",
        "--import",
        "./test/support/crash-after-start.ts",
      ]);
      service.child.kill("SIGUSR2");
      expect(await service.exited).toBe(1);
      const crash = service.logs.find((line) => line.msg === "crashed: draining, then exiting");
      expect(crash).toMatchObject({
        level: 60,
        requestId: "req_crash_test",
        origin: kind === "exception" ? "uncaughtException" : "unhandledRejection",
        err: { message: "boom: a bug in a callback" },
      });
      const messages = service.logs.map((line) => line.msg);
      expect(messages.indexOf("stopped")).toBeGreaterThan(messages.indexOf("crashed: draining, then exiting"));
    },
  );
});

describe("signals while exiting", () => {
  it("a stop signal repeated until the process is gone leaves it exiting 0", async () => {
    // Debug level: the repeat is logged, which once threw on the closed log and exited 7.
    const service = await startServiceProcess({ DATABASE_URL: "sqlite::memory:", LOG_LEVEL: "debug" });
    const started = Date.now();
    service.child.kill("SIGTERM");
    // Within the window in which a repeat is the same stop (a later one means "exit now").
    const repeat = setInterval(() => {
      if (Date.now() - started < 500 && service.child.exitCode === null) service.child.kill("SIGTERM");
    }, 1);
    try {
      expect(await service.exited).toBe(0);
    } finally {
      clearInterval(repeat);
    }
    expect(service.logs.map((line) => line.msg)).toContain("stopped");
  });
});
