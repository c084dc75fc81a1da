// ConfigReloader on a real directory: which watch events lead to a reload. (The process suite
// test/process/reload.test.ts covers reloading under calls and signals.)

import {
  appendFileSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { ConfigReloader } from "../../src/config/reload.js";

/** How long a test waits for a reload before it gives up (the debounce is 200 ms). */
const WAIT_MS = 5_000;

describe("ConfigReloader's watch", () => {
  const cleanups: (() => void)[] = [];
  afterEach(() => {
    for (const cleanUp of cleanups.splice(0)) cleanUp();
  });

  /** A reloader of `file` whose applied values are collected, watching already. */
  const watching = (file: string) => {
    const applied: string[] = [];
    const reloader = new ConfigReloader(pino({ level: "silent" }));
    reloader.add(
      "callers",
      [file],
      () => readFileSync(file, "utf8"),
      (value) => applied.push(value),
    );
    reloader.watch();
    cleanups.push(() => reloader.close());
    return applied;
  };
  const scratch = () => {
    const directory = mkdtempSync(join(tmpdir(), "connections-reload-"));
    cleanups.push(() => rmSync(directory, { recursive: true, force: true }));
    return directory;
  };
  const until = async (condition: () => boolean) => {
    for (let waited = 0; waited < WAIT_MS && !condition(); waited += 25) await sleep(25);
  };

  it("applies a changed file while another file of its directory is written all the time", async () => {
    const directory = scratch();
    const file = join(directory, "callers.json");
    writeFileSync(file, "first");
    const applied = watching(file);
    // A log beside the file, a line every 20 ms: more often than the debounce.
    let writing = true;
    const log = (async () => {
      while (writing) {
        appendFileSync(join(directory, "service.log"), "a log line\n");
        await sleep(20);
      }
    })();
    try {
      await sleep(100);
      writeFileSync(file, "second");
      await until(() => applied.length > 0);
      // Read while the log is still being written: what was applied by then.
      expect(applied).toEqual(["second"]);
    } finally {
      writing = false;
      await log;
    }
  });

  it("applies the files of a Kubernetes volume when its ..data symlink is swapped", async () => {
    // A secret or ConfigMap volume: callers.json -> ..data/callers.json, ..data -> a timestamped
    // directory; an update writes a new directory and renames a new symlink over ..data.
    const directory = scratch();
    const version = (name: string, text: string) => {
      mkdirSync(join(directory, name));
      writeFileSync(join(directory, name, "callers.json"), text);
    };
    version("..2026_12_06_first", "first");
    symlinkSync("..2026_12_06_first", join(directory, "..data"));
    symlinkSync("..data/callers.json", join(directory, "callers.json"));
    const applied = watching(join(directory, "callers.json"));
    version("..2026_12_06_second", "second");
    symlinkSync("..2026_12_06_second", join(directory, "..data_tmp"));
    renameSync(join(directory, "..data_tmp"), join(directory, "..data"));
    await until(() => applied.length > 0);
    expect(applied).toEqual(["second"]);
  });
});
