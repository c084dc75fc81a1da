// SQLite at the edges: a damaged file (refused at start when the damage is where start-up reads,
// found by check-database anywhere), files and directories the service may not write, a full
// disk, and a WAL that must stay small. Each start-up failure names the path, the cause in words
// and what to do. Permission cases run the opener as an unprivileged user (root ignores file
// modes); the full disk is a tiny tmpfs. Both need root here and are skipped with a message
// otherwise.

import { execFile, execFileSync } from "node:child_process";
import { chmodSync, closeSync, mkdirSync, mkdtempSync, openSync, rmSync, statSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import SqliteDatabase from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  CHECK_DATABASE_DAMAGED,
  CHECK_DATABASE_OK,
  CHECK_DATABASE_UNCHECKED,
  checkDatabase,
} from "../../src/bin/check-database.js";
import { openStore } from "../../src/store/open.js";
import { UnavailableError } from "../../src/store/store.js";
import { BUILT_MAIN, openStoreInChildProcess } from "../support/process.js";
import { newOrganization } from "./fixtures.js";

const NOBODY = 65534;
const ROOT = new URL("../..", import.meta.url).pathname;
const isRoot = process.getuid?.() === 0;

/** Opens the SQLite store at `path` as the unprivileged user. */
const openAsNobody = (path: string) => openStoreInChildProcess(`sqlite:${path}`, NOBODY);

describe("SQLite start-up", () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "connections-sqlite-"));
    chmodSync(dir, 0o777);
  });
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  /** A file with 300 organizations, closed; returns its path. */
  async function filled(name: string): Promise<string> {
    const path = join(dir, name);
    const store = await openStore({ databaseUrl: `sqlite:${path}` });
    for (let i = 0; i < 300; i++) await newOrganization(store);
    await store.close();
    return path;
  }

  /** Overwrites `bytes` bytes of the file at `offset` with garbage. */
  function damage(path: string, offset: number, bytes: number): void {
    const fd = openSync(path, "r+");
    writeSync(fd, Buffer.alloc(bytes, 0xa5), 0, bytes, offset);
    closeSync(fd);
  }

  /** Where in the file the rightmost leaf page of `btree` (a table or an index) is. */
  function lastLeaf(database: SqliteDatabase.Database, btree: string): { offset: number; bytes: number } {
    const { pageno } = database
      .prepare<[string], { pageno: number }>(
        "select pageno from dbstat where name = ? and pagetype = 'leaf' order by path desc limit 1",
      )
      .get(btree) as { pageno: number };
    const bytes = database.pragma("page_size", { simple: true }) as number;
    return { offset: (pageno - 1) * bytes, bytes };
  }

  const damagedMessage = (path: string) =>
    new RegExp(`SQLite database ${path} is damaged .*Restore it from a backup, or move it`);

  it("refuses a file whose schema is damaged, with a clear message", async () => {
    const path = await filled("schema.db");
    // Page 1 holds the schema after the 100-byte file header.
    damage(path, 100, 4096 - 100);
    await expect(openStore({ databaseUrl: `sqlite:${path}` })).rejects.toThrow(damagedMessage(path));
  });

  it("refuses a file whose last rows are damaged: start-up reads the ends of every table and index", async () => {
    const path = await filled("last-rows.db");
    const probe = new SqliteDatabase(path, { readonly: true });
    // Where the table's newest rows (the highest rowids) are.
    const leaf = lastLeaf(probe, "organizations");
    probe.close();
    damage(path, leaf.offset, leaf.bytes);
    await expect(openStore({ databaseUrl: `sqlite:${path}` })).rejects.toThrow(damagedMessage(path));
  });

  it("starts on a file that a later release gave a table WITHOUT ROWID, and reads its damaged end", async () => {
    const path = await filled("without-rowid.db");
    const later = new SqliteDatabase(path);
    later.exec("create table later_release (key text primary key, value text not null) without rowid");
    const insert = later.prepare("insert into later_release (key, value) values (?, ?)");
    for (let i = 0; i < 2_000; i++) insert.run(`key_${String(i).padStart(5, "0")}`, "v".repeat(200));
    const leaf = lastLeaf(later, "later_release");
    later.close();

    const store = await openStore({ databaseUrl: `sqlite:${path}` });
    await store.close();
    damage(path, leaf.offset, leaf.bytes);
    await expect(openStore({ databaseUrl: `sqlite:${path}` })).rejects.toThrow(damagedMessage(path));
  });

  it("check-database finds damage that start-up does not read, and passes a sound file", async () => {
    const path = await filled("middle.db");
    const lines: string[] = [];
    expect(checkDatabase(`sqlite:${path}`, (line) => lines.push(line))).toBe(CHECK_DATABASE_OK);
    expect(lines).toContainEqual(expect.stringMatching(/^checked every page of the file \(\d+ pages/));
    expect(lines.at(-1)).toMatch(/^ok: no damage found/);

    const probe = new SqliteDatabase(path, { readonly: true });
    // A leaf in the middle of the organizations table: neither end, so start-up does not read it.
    const leaves = probe
      .prepare<[], { pageno: number }>(
        "select pageno from dbstat where name = 'organizations' and pagetype = 'leaf' order by path",
      )
      .all();
    const pageSize = probe.pragma("page_size", { simple: true }) as number;
    probe.close();
    expect(leaves.length).toBeGreaterThan(2);
    // The end of the page, where its cells are: the page still reads as a leaf, its rows do not.
    damage(path, (leaves[1] as { pageno: number }).pageno * pageSize - 1024, 1024);
    await (await openStore({ databaseUrl: `sqlite:${path}` })).close();

    lines.length = 0;
    expect(checkDatabase(`sqlite:${path}`, (line) => lines.push(line))).toBe(CHECK_DATABASE_DAMAGED);
    expect(lines).toContainEqual(expect.stringMatching(/^found: /));
    expect(lines.at(-1)).toMatch(/^DAMAGED: \d+ findings .*Restore the file from a backup/);

    // A page beyond reading stops SQLite's check with an error: still reported as damage.
    damage(path, ((leaves[1] as { pageno: number }).pageno - 1) * pageSize, pageSize);
    lines.length = 0;
    expect(checkDatabase(`sqlite:${path}`, (line) => lines.push(line))).toBe(CHECK_DATABASE_DAMAGED);
    expect(lines.at(-1)).toMatch(/^DAMAGED: SQLite database .* is damaged/);
  });

  it("check-database says when it cannot check: no such file, or the file in use", async () => {
    const path = await filled("in-use.db");
    const lines: string[] = [];
    expect(checkDatabase(`sqlite:${join(dir, "missing.db")}`, (line) => lines.push(line))).toBe(
      CHECK_DATABASE_UNCHECKED,
    );
    expect(lines).toEqual([`check-database: there is no SQLite database at ${join(dir, "missing.db")}`]);
    // One process owns the file: a running service keeps the check out.
    const store = await openStore({ databaseUrl: `sqlite:${path}` });
    try {
      lines.length = 0;
      expect(checkDatabase(`sqlite:${path}`, (line) => lines.push(line))).toBe(CHECK_DATABASE_UNCHECKED);
      expect(lines.at(-1)).toMatch(/is in use by another process/);
    } finally {
      await store.close();
    }
  });

  it("check-database runs from the command line (main.js check-database)", async () => {
    const path = await filled("cli.db");
    const { code, stdout } = await new Promise<{ code: number | null; stdout: string }>((resolve) => {
      execFile(
        process.execPath,
        [BUILT_MAIN, "check-database"],
        { cwd: ROOT, env: { ...process.env, DATABASE_URL: `sqlite:${path}` } },
        (error, out) => resolve({ code: error === null ? 0 : (error.code as number), stdout: out }),
      );
    });
    expect(code).toBe(CHECK_DATABASE_OK);
    expect(stdout).toMatch(/checked every page of the file/);
    expect(stdout).toMatch(/ok: no damage found/);
  }, 60_000);

  describe.skipIf(!isRoot)("as an unprivileged user", () => {
    it("a read-only file (0444) names the path, the cause and the fix", async () => {
      const path = join(dir, "readonly.db");
      await (await openStore({ databaseUrl: `sqlite:${path}` })).close();
      chmodSync(path, 0o444);
      const { code, stderr } = await openAsNobody(path);
      expect(code).toBe(3);
      expect(stderr).toContain(`SQLite database ${path} is read-only to the service's user (uid ${NOBODY})`);
      expect(stderr).toMatch(/Make the file and its directory writable/);
    });

    it("an existing file in a read-only directory names the directory problem", async () => {
      const locked = join(dir, "locked");
      mkdirSync(locked);
      const path = join(locked, "connections.db");
      await (await openStore({ databaseUrl: `sqlite:${path}` })).close();
      chmodSync(path, 0o666);
      chmodSync(locked, 0o555);
      const { code, stderr } = await openAsNobody(path);
      expect(code).toBe(3);
      expect(stderr).toContain(`SQLite database ${path}`);
      expect(stderr).toMatch(/read-only|not writable/);
      expect(stderr).toMatch(/writable|write to it/);
    });

    it("a directory the user may not write names the directory and what to do", async () => {
      const closed = join(dir, "closed");
      mkdirSync(closed, { mode: 0o755 });
      const path = join(closed, "new.db");
      const { code, stderr } = await openAsNobody(path);
      expect(code).toBe(3);
      expect(stderr).toContain(`SQLite database ${path} cannot be opened or created: its directory ${closed}`);
      expect(stderr).toMatch(/Create the directory and let that user write to it/);
    });
  });

  it("keeps the WAL bounded while writing far more than its bound", async () => {
    const path = join(dir, "wal.db");
    const store = await openStore({ databaseUrl: `sqlite:${path}` });
    try {
      let largest = 0;
      // The bound is 8 MiB (open.ts); a checkpoint may find it passed by the last group's pages.
      for (let i = 0; i < 3000; i++) {
        await store.createOrganization({ id: `org_wal_${i}`, name: "x".repeat(8000), createTime: new Date() });
        if (i % 100 === 0) largest = Math.max(largest, statSync(`${path}-wal`).size);
      }
      expect(statSync(path).size + statSync(`${path}-wal`).size).toBeGreaterThan(24 * 1024 * 1024);
      expect(largest).toBeLessThanOrEqual(9 * 1024 * 1024);
    } finally {
      await store.close();
    }
  });

  it("keeps the WAL bounded when small writes one at a time are followed by large groups", async () => {
    // What the checkpoints go by must follow a change of pace: a bound learned from the small
    // writes' pages would let the large groups that follow take the WAL far past it.
    const path = join(dir, "wal-pace.db");
    const store = await openStore({ databaseUrl: `sqlite:${path}` });
    try {
      for (let i = 0; i < 200; i++) {
        await store.createOrganization({ id: `org_pace_${i}`, name: "small", createTime: new Date() });
      }
      let largest = 0;
      for (let round = 0; round < 30; round++) {
        await Promise.all(
          Array.from({ length: 100 }, (_, i) =>
            store.createOrganization({ id: `org_pace_${round}_${i}`, name: "x".repeat(8000), createTime: new Date() }),
          ),
        );
        largest = Math.max(largest, statSync(`${path}-wal`).size);
      }
      // The bound is 8 MiB; a checkpoint comes between groups, so one group's pages (about 1 MiB
      // here) may pass it.
      expect(largest).toBeLessThanOrEqual(10 * 1024 * 1024);
    } finally {
      await store.close();
    }
  });
});

/** A tmpfs of `size`, or undefined when this machine will not mount one for us. */
function mountTinyFilesystem(size: string): string | undefined {
  const mountPoint = mkdtempSync(join(tmpdir(), "connections-full-"));
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", mountPoint], { stdio: "ignore" });
    return mountPoint;
  } catch {
    rmSync(mountPoint, { recursive: true, force: true });
    return undefined;
  }
}

const tiny = isRoot ? mountTinyFilesystem("2m") : undefined;
if (tiny === undefined) console.warn("SQLite disk-full test skipped: cannot mount a tmpfs here (needs root)");

describe.skipIf(tiny === undefined)("SQLite on a full disk", () => {
  afterAll(() => {
    if (tiny === undefined) return;
    execFileSync("umount", [tiny]);
    rmSync(tiny, { recursive: true, force: true });
  });

  it("fails writes UNAVAILABLE with the real cause (not a failed ROLLBACK) and recovers when space returns", async () => {
    const mount = tiny as string;
    const path = join(mount, "connections.db");
    const store = await openStore({ databaseUrl: `sqlite:${path}` });
    try {
      // Take all but a little of the space.
      const filler = join(mount, "filler");
      const fd = openSync(filler, "w");
      try {
        for (;;) writeSync(fd, Buffer.alloc(16 * 1024));
      } catch {}
      closeSync(fd);
      let failure: unknown;
      for (let i = 0; i < 2000 && failure === undefined; i++) {
        failure = await store
          .createOrganization({ id: `org_full_${i}`, name: "y".repeat(1500), createTime: new Date() })
          .then(
            () => undefined,
            (error: unknown) => error,
          );
      }
      expect(failure).toBeInstanceOf(UnavailableError);
      const cause = (failure as UnavailableError).cause as { code?: string; message?: string };
      expect(cause.code).toBe("SQLITE_FULL");
      expect(cause.message).not.toMatch(/no transaction is active/);

      rmSync(filler);
      await store.createOrganization({ id: "org_after_full", name: "Room again", createTime: new Date() });
      expect((await store.getOrganization("org_after_full"))?.name).toBe("Room again");
    } finally {
      await store.close();
    }
  });
});
