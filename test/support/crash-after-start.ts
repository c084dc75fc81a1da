// Preloaded (node --import) into a service process by the crash test: on SIGUSR2 it throws from a
// callback (CRASH_KIND=exception) or rejects a promise nobody awaits (CRASH_KIND=rejection), as a
// bug would.

process.on("SIGUSR2", () => {
  const error = Object.assign(new Error("boom: a bug in a callback"), { requestId: "req_crash_test" });
  setImmediate(() => {
    if (process.env.CRASH_KIND === "rejection") void Promise.reject(error);
    else throw error;
  });
});
