// `npm run test:unit`: the fast loop. The domain, the api layer and the codecs, the store on SQLite
// in memory, and the collection after a burst: no server process, no file, no PostgreSQL.
// `npm test` runs everything.

import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: [
      "test/domain/**/*.test.ts",
      "test/api/**/*.test.ts",
      "test/app/**/*.test.ts",
      "test/store/**/*.test.ts",
      "test/runtime/**/*.test.ts",
    ],
    // Start-up against files, permissions and absent servers, and fsync counting: the full suite's.
    exclude: ["test/store/open.test.ts", "test/store/sqlite-faults.test.ts", "test/store/durability.test.ts"],
    env: { TEST_DATABASES: "sqlite-memory" },
    // Worker threads start faster than the full suite's processes, and nothing here needs a process.
    pool: "threads",
    // As in the full suite: a worker keeps its modules from one file to the next (vitest.config.ts).
    isolate: false,
  },
});
