// Serving needs every migration this build ships. While one is missing (MIGRATE_ON_START=false and
// the `migrate` step has not run yet) the replica is NOT_SERVING, says "run migrate" in its log,
// and its store refuses every read and write with UnavailableError (the caller sees UNAVAILABLE
// DATABASE_UNAVAILABLE and retries elsewhere) instead of running queries on tables that are not
// there yet. Each refusal and each readiness poll looks at the schema again (one lookup at a
// time), so the gate opens as soon as the step has run.

import type { Logger } from "pino";
import { type Store, UnavailableError } from "./store.js";

/** Calls that never touch the schema: they pass even while it is behind. */
const UNGATED: ReadonlySet<string> = new Set<keyof Store>([
  "pendingMigrations",
  "ping",
  "poolStats",
  "checkCacheStats",
  "onFeedAppended",
  "backup",
  "close",
]);

export class SchemaGate {
  #pending: readonly string[];
  #lookup: Promise<boolean> | undefined;

  private constructor(
    private readonly store: Store,
    private readonly logger: Logger,
    pending: readonly string[],
  ) {
    this.#pending = pending;
  }

  static async start(store: Store, logger: Logger): Promise<SchemaGate> {
    const gate = new SchemaGate(store, logger, await store.pendingMigrations());
    if (gate.#pending.length > 0) {
      logger.warn(
        { pendingMigrations: gate.#pending },
        "the database schema is behind this release: NOT_SERVING, and every call answers UNAVAILABLE, " +
          "until you run migrate (node dist/src/main.js migrate, or npm run migrate)",
      );
    }
    return gate;
  }

  /** Whether the schema has every migration this build ships (looked up again while it has not). */
  current(): Promise<boolean> {
    if (this.#pending.length === 0) return Promise.resolve(true);
    this.#lookup ??= this.#lookAgain().finally(() => {
      this.#lookup = undefined;
    });
    return this.#lookup;
  }

  /**
   * `store`, whose schema-dependent calls reject with UnavailableError while the schema is behind.
   * A schema current at start is `store` itself: the hot path pays nothing for the gate.
   */
  guard(store: Store): Store {
    if (this.#pending.length === 0) return store;
    const gate = this;
    return new Proxy(store, {
      get(target, property) {
        const value: unknown = Reflect.get(target, property, target);
        if (typeof value !== "function") return value;
        if (gate.#pending.length === 0 || typeof property !== "string" || UNGATED.has(property)) {
          return value.bind(target);
        }
        return async (...args: unknown[]) => {
          if (!(await gate.current())) throw new UnavailableError({ why: "schema_behind" });
          return value.apply(target, args);
        };
      },
    });
  }

  async #lookAgain(): Promise<boolean> {
    this.#pending = await this.store.pendingMigrations().catch(() => this.#pending);
    if (this.#pending.length === 0) this.logger.info("the database schema is now at this release's migrations");
    return this.#pending.length === 0;
  }
}
