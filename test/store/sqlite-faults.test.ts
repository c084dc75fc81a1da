// SQLite at the edges: a damaged file, files and directories the service may not write, a full
// disk, and a WAL that must stay small. Each start-up failure names the path, the cause in words
// and what to do. Permission cases run the opener as an unprivileged user (root ignores file
// modes); the full disk is a tiny tmpfs. Both need root here and are skipped with a message
// otherwise.

import { execFileSync } from "node:child_process";
import { chmodSync, closeSync, mkdirSync, mkdtempSync, openSync, rmSync, statSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openStore } from "../../src/store/open.js";
import { UnavailableError } from "../../src/store/store.js";
import { openStoreInChildProcess } from "../support/process.js";
import { newOrganization } from "./fixtures.js";

const NOBODY = 65534;
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

  it("refuses a damaged file with a clear message (quick_check), instead of serving from it", async () => {
    const path = join(dir, "damaged.db");
    const store = await openStore({ databaseUrl: `sqlite:${path}` });
    for (let i = 0; i < 300; i++) await newOrganization(store);
    await store.close();
    // Damage the last page, which start-up reads do not touch.
    const size = statSync(path).size;
    const fd = openSync(path, "r+");
    writeSync(fd, Buffer.alloc(2048, 0xa5), 0, 2048, size - 3000);
    closeSync(fd);
    const error = await openStore({ databaseUrl: `sqlite:${path}` }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Error);
    expect((error as Error).message).toMatch(
      new RegExp(`SQLite database ${path} is damaged .*Restore it from a backup, or move it`),
    );
  });

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
      for (let i = 0; i < 1500; i++) {
        await store.createOrganization({ id: `org_wal_${i}`, name: "x".repeat(2000), createTime: new Date() });
        if (i % 100 === 0) largest = Math.max(largest, statSync(`${path}-wal`).size);
      }
      expect(statSync(path).size + statSync(`${path}-wal`).size).toBeGreaterThan(3 * 1024 * 1024);
      expect(largest).toBeLessThanOrEqual(2 * 1024 * 1024);
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
