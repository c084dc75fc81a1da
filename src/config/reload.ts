// Configuration files that change without a restart: the callers file and the TLS certificate,
// key and client CA. They are read again on SIGHUP and when they change on disk.
//
// The watch is on each file's directory, not on the file: editors and Kubernetes replace a file
// by renaming another onto it (a secret volume swaps its `..data` symlink), which ends a watch on
// the old inode. Events on other files of the directory are passed over, the rest are debounced,
// and a source is re-read only when the bytes of its files differ from what was last read. A
// file that does not parse or validate is refused with an error log and a counted failure; what
// was in force stays in force.

import { createHash } from "node:crypto";
import { type FSWatcher, readFileSync, watch } from "node:fs";
import { basename, dirname } from "node:path";
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
    const namesByDirectory = new Map<string, Set<string>>();
    for (const path of this.#sources.flatMap((source) => source.paths)) {
      const names = namesByDirectory.get(dirname(path)) ?? new Set<string>();
      names.add(basename(path));
      namesByDirectory.set(dirname(path), names);
    }
    for (const [directory, names] of namesByDirectory) {
      try {
        const watcher = watch(directory, { persistent: false }, (_event, name) => {
          if (concerns(name, names)) this.#schedule();
        });
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

/**
 * Whether a watch event on `name` may have changed one of `files`: the file itself, or an entry
 * whose name starts with ".." (a Kubernetes volume swaps its `..data` symlink, through which the
 * files point). Other files in the directory (say, logs written beside it) are passed over: each
 * of their writes would otherwise restart the debounce, and a directory written to more often than
 * DEBOUNCE_MS would never be read again. Without a name (some platforms), anything may have changed.
 */
function concerns(name: string | null, files: ReadonlySet<string>): boolean {
  return name === null || files.has(name) || name.startsWith("..");
}

function digestOf(paths: readonly string[]): string {
  const hash = createHash("sha256");
  for (const path of paths) hash.update(readFileSync(path)).update("\0");
  return hash.digest("hex");
}
