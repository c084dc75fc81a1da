// The answers kept for idempotent writes: looked up before a write runs, saved with it, and pruned
// once older than the retention. What a record holds (response bytes, which errors are final) is
// decided by src/api/idempotency.ts; this layer keeps them, one call per key at a time.

import type { Logger } from "pino";
import type { Cancellation } from "../runtime/cancellation.js";
import type { IdempotencyRecord, IdempotentOutcome, Store } from "../store/store.js";

/** What identifies one idempotent write and what it asked for. */
export interface IdempotencyKey {
  /** Whose key it is: "organization:<id>" or "caller:<name>". */
  readonly scope: string;
  readonly requestId: string;
  /** The RPC's name. */
  readonly method: string;
  /** A digest of the request's parameters, request_id aside. */
  readonly fingerprint: string;
}

/** Records pruned per statement: small, so that no write waits long behind a delete. */
export const PRUNE_BATCH = 500;

export class Idempotency {
  /**
   * Calls under way in this process, by key: a concurrent retry waits for the first, then replays.
   * Each holds a promise of its own that nothing but a retry waits on, not the call's work: V8 keeps
   * a Map's replaced tables, entries and all, and through them young collections kept every write's
   * objects alive until a full one (runtime/under-way.ts).
   */
  readonly #running = new Map<string, Promise<void>>();

  constructor(
    private readonly store: Store,
    private readonly now: () => Date = () => new Date(),
  ) {}

  find(key: IdempotencyKey): Promise<IdempotencyRecord | undefined> {
    return this.store.findIdempotencyRecord(key.scope, key.requestId);
  }

  /** The record that answers `key` with `outcome`, made now. */
  record(key: IdempotencyKey, outcome: IdempotentOutcome): IdempotencyRecord {
    // Field by field, not `{ ...key, ... }`: V8 gives a spread copy a hidden class outside its
    // transition tree, so each property added after it made every record a hidden class of its own
    // (docs/performance.md, "Hidden classes of their own").
    return {
      scope: key.scope,
      requestId: key.requestId,
      method: key.method,
      fingerprint: key.fingerprint,
      outcome,
      createTime: this.now(),
    };
  }

  /** Saves an answer that no write carried; AlreadyExistsError when another call answered first. */
  save(record: IdempotencyRecord, signal?: Cancellation): Promise<void> {
    return this.store.saveIdempotencyRecord(record, signal);
  }

  /**
   * Runs `work` for `key` when no other call with that key runs in this process, so that a retry
   * which arrives while its first call is still writing waits for it and then finds its answer.
   * (Across processes the record's primary key decides: the later write fails and replays.)
   */
  async exclusive<T>(key: IdempotencyKey, work: () => Promise<T>): Promise<T> {
    const slot = `${key.scope}\n${key.requestId}`;
    for (let running = this.#running.get(slot); running !== undefined; running = this.#running.get(slot)) {
      await running;
    }
    let finished = () => {};
    this.#running.set(
      slot,
      new Promise<void>((resolve) => {
        finished = resolve;
      }),
    );
    try {
      return await work();
    } finally {
      this.#running.delete(slot);
      finished();
    }
  }

  /** Deletes the records older than `retentionMs`, a batch at a time; returns how many. */
  async prune(retentionMs: number, shouldStop: () => boolean = () => false): Promise<number> {
    const before = new Date(this.now().getTime() - retentionMs);
    let pruned = 0;
    for (;;) {
      const deleted = await this.store.pruneIdempotencyRecords(before, PRUNE_BATCH);
      pruned += deleted;
      if (deleted < PRUNE_BATCH || shouldStop()) return pruned;
      // Let the writes queued behind this batch go first.
      await new Promise((resolve) => setImmediate(resolve));
    }
  }
}

export interface PruningOptions {
  readonly retentionMs: number;
  readonly intervalMs: number;
  readonly logger: Logger;
  /** Told how many records each round deleted (metrics). */
  readonly onPruned?: (count: number) => void;
}

/** Prunes in the background every `intervalMs` until the returned function is called. */
export function startPruning(idempotency: Idempotency, options: PruningOptions): () => Promise<void> {
  let stopped = false;
  let round: Promise<void> = Promise.resolve();
  const run = () => {
    round = idempotency
      .prune(options.retentionMs, () => stopped)
      .then(
        (count) => {
          if (count > 0) options.onPruned?.(count);
        },
        (error: unknown) =>
          options.logger.warn({ err: error }, "pruning idempotency records failed; next round retries"),
      );
  };
  const timer = setInterval(run, options.intervalMs);
  timer.unref();
  run();
  return async () => {
    stopped = true;
    clearInterval(timer);
    await round;
  };
}
