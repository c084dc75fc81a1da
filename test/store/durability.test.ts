// SQLite: every acknowledged write is flushed to the disk, and concurrent writes share the flush.
// Counted with strace in a process of its own: the fsync/fdatasync calls of N writes, less those
// of a run that only opens and closes the same kind of database (migrations, checkpoints).

import { execFileSync, spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const ROOT = new URL("../..", import.meta.url).pathname;
const WRITES = 60;
const hasStrace = spawnSync("strace", ["-V"]).status === 0;

describe.skipIf(!hasStrace)("SQLite writes on the disk (strace; .ci/run installs it)", () => {
  let directory: string;

  beforeAll(async () => {
    directory = await mkdtemp(join(tmpdir(), "connections-fsync-"));
  });
  afterAll(async () => {
    await rm(directory, { recursive: true, force: true });
  });

  async function flushes(mode: "none" | "sequential" | "concurrent"): Promise<number> {
    const trace = join(directory, `${mode}.strace`);
    execFileSync(
      "strace",
      [
        "-f",
        "-qq",
        "-e",
        "trace=fsync,fdatasync",
        "-o",
        trace,
        process.execPath,
        "--import",
        "tsx",
        "test/support/sqlite-writes.ts",
        join(directory, `${mode}.db`),
        mode,
        String(WRITES),
      ],
      { cwd: ROOT, stdio: ["ignore", "ignore", "inherit"] },
    );
    const lines = (await readFile(trace, "utf8")).split("\n");
    return lines.filter((line) => /\b(fsync|fdatasync)\(/.test(line)).length;
  }

  it("flushes once or more per acknowledged write made one after the other, and groups concurrent ones", async () => {
    const baseline = await flushes("none");
    const sequential = (await flushes("sequential")) - baseline;
    const concurrent = (await flushes("concurrent")) - baseline;
    expect(sequential).toBeGreaterThanOrEqual(WRITES);
    // Writes that arrive together commit together: a handful of flushes for all of them.
    expect(concurrent).toBeLessThanOrEqual(WRITES / 10);
  }, 60_000);
});
