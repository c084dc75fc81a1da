// Preloaded (node --import) into a service process by the crash test: on SIGUSR2 it throws from a
// callback (CRASH_KIND=exception) or rejects a promise nobody awaits (CRASH_KIND=rejection), as a
// bug would.

import { pbkdf2 } from "node:crypto";

process.on("SIGUSR2", () => {
  const error = Object.assign(new Error("boom: a bug in a callback"), { requestId: "req_crash_test" });
  // With CRASH_BUSY_THREAD_POOL (and UV_THREADPOOL_SIZE=1), libuv's one pool thread is kept busy
  // first, so the log's asynchronous write of the crash line waits behind it while the drain
  // finishes: the exit must still write that line, and before "stopped".
  if (process.env.CRASH_BUSY_THREAD_POOL === "1") pbkdf2("x", "y", 400_000, 64, "sha512", () => {});
  setImmediate(() => {
    if (process.env.CRASH_KIND === "rejection") void Promise.reject(error);
    else throw error;
  });
});
