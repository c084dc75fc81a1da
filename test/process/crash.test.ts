// A crash (an exception no one caught, a rejection no one handled) is logged with its request id,
// drains like SIGTERM (health NOT_SERVING, in-flight calls finish, the database closes) and exits
// non-zero, so that the supervisor restarts the process and the crash is visible.

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
      const service = await startServiceProcess(busyThreadPool ? { ...env, ...busy } : env, [
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
