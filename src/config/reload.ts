// Configuration files that change without a restart: the callers file and the TLS certificate,
// key and client CA. They are read again on SIGHUP and when they change on disk.
//
// The watch is on each file's directory, not on the file: editors and Kubernetes replace a file
// by renaming another onto it (a secret volume swaps its `..data` symlink), which ends a watch on
// the old inode. Events are debounced, and a source is re-read only when the bytes of its files
// differ from what was last read, so unrelated churn in the directory costs one small read. A
// file that does not parse or validate is refused with an error log and a counted failure; what
// was in force stays in force.

import { createHash } from "node:crypto";
import { type FSWatcher, readFileSync, watch } from "node:fs";
import { dirname } from "node:path";
import type { Logger } from "pino";

/** Where reloads are reported, e.g. Prometheus. */
export interface ReloadObserver {
  /** `source` is "callers" or "tls"; `ok` false for a refused file. */
  reloaded(source: string, ok: boolean, at: Date): void;
}

interface Source {
  readonly name: string;
  readonly paths: readonly string[];
  /** Reads and validates; applies nothing. Throws an Error that names the problem, not a secret. */
  readonly read: () => unknown;
  readonly apply: (value: unknown) => void;
  /** A digest of the files' bytes when last read, so that a watch event on unchanged files does nothing. */
  seen: string;
  lastSuccess: Date;
}

const DEBOUNCE_MS = 200;

export class ConfigReloader {
  readonly #sources: Source[] = [];
  readonly #watchers: FSWatcher[] = [];
  #observer: ReloadObserver | undefined;
  #debounce: NodeJS.Timeout | undefined;

  constructor(private readonly logger: Logger) {}

  /**
   * Reads `name` for the first time (an error propagates: the service must not start on a bad
   * file) and returns what `read` made; later reloads pass a new value to `apply`.
   */
  add<T>(name: string, paths: readonly string[], read: () => T, apply: (value: T) => void): T {
    const seen = digestOf(paths);
    const value = read();
    this.#sources.push({
      name,
      paths,
      read,
      apply: apply as (value: unknown) => void,
      seen,
      lastSuccess: new Date(),
    });
    return value;
  }

  /** Reports the start-up reads, and every reload from now on, to `observer`. */
  observe(observer: ReloadObserver): void {
    this.#observer = observer;
    for (const source of this.#sources) observer.reloaded(source.name, true, source.lastSuccess);
  }

  /** Watches the directories of every file added so far. */
  watch(): void {
    const directories = new Set(this.#sources.flatMap((source) => source.paths.map((path) => dirname(path))));
    for (const directory of directories) {
      try {
        const watcher = watch(directory, { persistent: false }, () => this.#schedule());
        watcher.on("error", (error) =>
          this.logger.warn(
            { err: error, directory },
            "stopped watching a configuration directory; SIGHUP still reloads",
          ),
        );
        this.#watchers.push(watcher);
      } catch (error) {
        this.logger.warn({ err: error, directory }, "cannot watch a configuration directory; SIGHUP still reloads");
      }
    }
  }

  /** Re-reads every source (SIGHUP), or only those whose files changed (a watch event). */
  reload(trigger: "SIGHUP" | "file change"): void {
    for (const source of this.#sources) {
      let seen: string;
      try {
        seen = digestOf(source.paths);
      } catch (error) {
        this.#refused(source, trigger, error);
        continue;
      }
      if (trigger === "file change" && seen === source.seen) continue;
      source.seen = seen;
      let value: unknown;
      try {
        value = source.read();
        source.apply(value);
      } catch (error) {
        this.#refused(source, trigger, error);
        continue;
      }
      source.lastSuccess = new Date();
      this.#observer?.reloaded(source.name, true, source.lastSuccess);
      this.logger.info({ source: source.name, trigger }, "configuration reloaded");
    }
  }

  close(): void {
    clearTimeout(this.#debounce);
    for (const watcher of this.#watchers) watcher.close();
    this.#watchers.length = 0;
  }

  #schedule(): void {
    clearTimeout(this.#debounce);
    this.#debounce = setTimeout(() => this.reload("file change"), DEBOUNCE_MS);
    this.#debounce.unref();
  }

  #refused(source: Source, trigger: string, error: unknown): void {
    this.#observer?.reloaded(source.name, false, new Date());
    // The message names the file and the problem; readers of these files never quote contents.
    this.logger.error(
      { source: source.name, trigger, error: (error as Error).message, inForceSince: source.lastSuccess.toISOString() },
      "configuration reload refused; the previous configuration stays in force",
    );
  }
}

function digestOf(paths: readonly string[]): string {
  const hash = createHash("sha256");
  for (const path of paths) hash.update(readFileSync(path)).update("\0");
  return hash.digest("hex");
}
