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
const ACKNOWLEDGED = "acknowledged";
const FLUSH_STARTED = /\b(fsync|fdatasync)\(/;
/** A flush that returned 0: in one line, or the end of one that strace split across lines. */
const FLUSH_ENDED = /(\b(fsync|fdatasync)\(.*\)\s+= 0$)|(<\.\.\. (fsync|fdatasync) resumed>.*= 0$)/;
const hasStrace = spawnSync("strace", ["-V"]).status === 0;

describe.skipIf(!hasStrace)("SQLite writes on the disk (strace; .ci/run installs it)", () => {
  let directory: string;

  beforeAll(async () => {
    directory = await mkdtemp(join(tmpdir(), "connections-fsync-"));
  });
  afterAll(async () => {
    await rm(directory, { recursive: true, force: true });
  });

  /** The traced process's syscalls that write or flush files, one line each. */
  let runs = 0;
  async function trace(mode: "none" | "sequential" | "concurrent"): Promise<string[]> {
    const run = `${mode}-${++runs}`;
    const trace = join(directory, `${run}.strace`);
    execFileSync(
      "strace",
      [
        "-f",
        "-qq",
        "-e",
        "trace=fsync,fdatasync,pwrite64,write",
        "-o",
        trace,
        process.execPath,
        "--import",
        "tsx",
        "test/support/sqlite-writes.ts",
        join(directory, `${run}.db`),
        mode,
        String(WRITES),
        ACKNOWLEDGED,
      ],
      { cwd: ROOT, stdio: ["ignore", "ignore", "inherit"] },
    );
    return (await readFile(trace, "utf8")).split("\n");
  }

  async function flushes(mode: "none" | "sequential" | "concurrent"): Promise<number> {
    return (await trace(mode)).filter((line) => FLUSH_STARTED.test(line)).length;
  }

  it("flushes once or more per acknowledged write made one after the other, and groups concurrent ones", async () => {
    const baseline = await flushes("none");
    const sequential = (await flushes("sequential")) - baseline;
    const concurrent = (await flushes("concurrent")) - baseline;
    expect(sequential).toBeGreaterThanOrEqual(WRITES);
    // Writes that arrive together commit together: a handful of flushes for all of them.
    expect(concurrent).toBeLessThanOrEqual(WRITES / 10);
  }, 60_000);

  it("acknowledges a write only after a flush that ended after the write reached the file", async () => {
    let unflushed = false;
    let acknowledged = 0;
    const acknowledgedUnflushed: number[] = [];
    for (const line of await trace("sequential")) {
      // A flush counts once it has returned (strace shows a call that another thread's call
      // interrupted as "<... fdatasync resumed>"), and only for what was written before it began;
      // one write runs at a time here, so nothing is written while it runs.
      if (FLUSH_ENDED.test(line)) unflushed = false;
      else if (/\bpwrite64\(/.test(line)) unflushed = true;
      else if (line.includes(`"${ACKNOWLEDGED}"`)) {
        acknowledged++;
        if (unflushed) acknowledgedUnflushed.push(acknowledged);
      }
    }
    expect(acknowledged).toBe(WRITES);
    expect(acknowledgedUnflushed).toEqual([]);
  }, 60_000);
});
