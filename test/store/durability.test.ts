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
const LARGE_WRITES = 1_600;
const ACKNOWLEDGED = "acknowledged";
const FLUSH_STARTED = /\b(fsync|fdatasync)\(/;
/** A flush that returned 0: in one line, or the end of one that strace split across lines. */
const FLUSH_ENDED = /(\b(fsync|fdatasync)\(.*\)\s+= 0$)|(<\.\.\. (fsync|fdatasync) resumed>.*= 0$)/;
const hasStrace = spawnSync("strace", ["-V"]).status === 0;

type Mode = "none" | "sequential" | "large" | "concurrent" | "connections";

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
  async function trace(mode: Mode, writes = WRITES): Promise<string[]> {
    const run = `${mode}-${++runs}`;
    const trace = join(directory, `${run}.strace`);
    execFileSync(
      "strace",
      [
        "-f",
        "-qq",
        "-y",
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
        String(writes),
        ACKNOWLEDGED,
      ],
      { cwd: ROOT, stdio: ["ignore", "ignore", "inherit"] },
    );
    return (await readFile(trace, "utf8")).split("\n");
  }

  async function flushes(mode: Mode): Promise<number> {
    return (await trace(mode)).filter((line) => FLUSH_STARTED.test(line)).length;
  }

  it("flushes once or more per acknowledged write made one after the other, and groups concurrent ones", async () => {
    const baseline = await flushes("none");
    const sequential = (await flushes("sequential")) - baseline;
    const concurrent = (await flushes("concurrent")) - baseline;
    expect(sequential).toBeGreaterThanOrEqual(WRITES);
    // Writes that arrive together commit together: a handful of flushes for all of them.
    expect(concurrent).toBeLessThanOrEqual(WRITES / 10);
  }, 240_000);

  it("writes only the WAL and the database file: a group's savepoints keep what they would undo in memory", async () => {
    // Each write of a group runs in a savepoint, which keeps the pages it changes as they were, so
    // that it can roll back alone. Past 64 KiB SQLite moves that to a temporary file, kept for as
    // long as the connection is open (locking_mode = EXCLUSIVE): a write system call per page
    // changed from then on, about half of a grouped write's CPU (docs/performance.md).
    const files = (await trace("connections", 400))
      .map((line) => /\bpwrite64\(\d+<([^>]*)>/.exec(line)?.[1])
      .filter((file) => file !== undefined);
    // The rollback journal is the migrations', run before the database turns to WAL mode.
    const kinds = new Set(files.map((file) => file.replace(/^.*\.db(-wal|-journal)?$/, ".db$1")));
    expect(kinds).toContain(".db-wal");
    expect([...kinds].filter((kind) => ![".db", ".db-wal", ".db-journal"].includes(kind))).toEqual([]);
  }, 240_000);

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
  }, 240_000);

  it("checkpoints off the event loop, the WAL on the disk before it is copied, the file before the WAL starts over", async () => {
    // 1,600 writes of 8 KB: about 25 MiB through a WAL checkpointed each time it passes 8 MiB.
    const lines = await trace("large", LARGE_WRITES);
    const eventLoop = lines.map((line) => /"event loop (\d+)"/.exec(line)?.[1]).find((pid) => pid !== undefined);
    expect(eventLoop).toBeDefined();
    const written = (line: string, file: "database" | "wal") =>
      /\bpwrite64\(\d+<[^>]*>/.test(line) && line.includes(file === "wal" ? ".db-wal>" : ".db>");
    // The file a flush that returned 0 on this line flushed. A flush that another thread's call
    // interrupted shows as "<tid> fdatasync(18</x.db> <unfinished ...>" and later as
    // "<tid> <... fdatasync resumed>) = 0": only the first line names the file.
    const interrupted = new Map<string, string>();
    const flushedFile = (line: string): string | undefined => {
      const thread = line.split(" ")[0] ?? "";
      const started = /\b(?:fsync|fdatasync)\(\d+<([^>]*)>/.exec(line)?.[1];
      if (started !== undefined && line.includes("<unfinished ...>")) {
        interrupted.set(thread, started);
        return undefined;
      }
      if (!FLUSH_ENDED.test(line)) return undefined;
      const file = started ?? interrupted.get(thread);
      interrupted.delete(thread);
      return file;
    };
    let walUnflushed = false;
    let databaseUnflushed = false;
    let acknowledged = 0;
    let copies = 0;
    let databaseFlushes = 0;
    const problems: string[] = [];
    for (const line of lines) {
      if (line.includes(`"${ACKNOWLEDGED}"`)) acknowledged++;
      // From the first write to the last acknowledgement: before, the migrations; after, close.
      const writing = acknowledged > 0 && acknowledged < LARGE_WRITES;
      if (writing && FLUSH_STARTED.test(line) && line.startsWith(`${eventLoop} `)) problems.push(`event loop: ${line}`);
      if (written(line, "wal")) {
        if (writing && databaseUnflushed) problems.push(`WAL written before the copied pages were flushed: ${line}`);
        walUnflushed = true;
      } else if (written(line, "database")) {
        if (writing && walUnflushed) problems.push(`pages copied from a WAL not yet flushed: ${line}`);
        if (writing) copies++;
        databaseUnflushed = true;
      } else {
        const file = flushedFile(line);
        if (file?.endsWith(".db-wal")) walUnflushed = false;
        else if (file?.endsWith(".db")) {
          databaseUnflushed = false;
          if (writing) databaseFlushes++;
        }
      }
    }
    expect(acknowledged).toBe(LARGE_WRITES);
    expect(problems.slice(0, 5)).toEqual([]);
    // Checkpoints happened while writing, and each ended with its own flush of the file.
    expect(copies).toBeGreaterThan(0);
    expect(databaseFlushes).toBeGreaterThanOrEqual(2);
  }, 240_000);
});
