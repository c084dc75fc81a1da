// `npm test`: every suite. Without TEST_DATABASE_URL the PostgreSQL suites run on a PostgreSQL
// started for the run (test/support/postgres-server.ts); the process suites run the built service,
// which test/support/build.ts brings up to date first. `npm run test:unit` is the fast subset
// (vitest.unit.config.ts).

import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["test/support/build.ts", "test/support/postgres-server.ts"],
    // Three files at a time (vitest's default is one per core less one: one here). Much of a
    // suite's time is spent waiting for servers, processes and the database, so three keep two
    // cores busy. No suite needs the machine to itself: CI runs them all once more with every core
    // kept busy by a CPU hog, and they must pass there too.
    maxWorkers: 3,
    // A worker runs its files one after another in the same process instead of a fresh one per
    // file: importing the service, the generated code and the client stacks again for every file
    // cost more CPU than many suites' tests do (docs/performance.md). So a suite leaves nothing
    // behind: it closes the servers, clients, processes and timers it starts, and changes no
    // global state it does not restore.
    isolate: false,
    // End-to-end suites start real servers and processes: give them room on a busy machine.
    testTimeout: 30_000,
    hookTimeout: 60_000,
  },
});
