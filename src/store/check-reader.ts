// How getConnectionForCheck reads, per dialect, without giving up exactness.
//
// SQLite belongs to one process (the file is locked exclusively), so every write passes through
// this process and a cache that every write updates before it returns is exact.
// PostgreSQL may have several replicas writing, so nothing is cached: concurrent checks are
// coalesced into one query instead, each sent after all of its callers arrived.

import type { ConnectionRecord } from "./store.js";

export interface CheckReader {
  get(id: string): Promise<ConnectionRecord | undefined>;
  /** Called after a write of `record` committed and before the write returns. */
  written(record: ConnectionRecord): void;
}

/** A bounded map that forgets its oldest insertion first. */
export class FifoMap<K, V> {
  readonly #entries = new Map<K, V>();

  constructor(private readonly capacity: number) {}

  get(key: K): V | undefined {
    return this.#entries.get(key);
  }

  set(key: K, value: V): void {
    if (!this.#entries.has(key) && this.#entries.size >= this.capacity) {
      const oldest = this.#entries.keys().next();
      if (oldest.done !== true) this.#entries.delete(oldest.value);
    }
    this.#entries.set(key, value);
  }
}

export class CachingCheckReader implements CheckReader {
  readonly #entries: FifoMap<string, ConnectionRecord>;
  /** Counts writes into the cache, so a fill can tell whether one raced with its read. */
  #writeEpoch = 0;

  constructor(
    private readonly load: (id: string) => Promise<ConnectionRecord | undefined>,
    capacity = 200_000,
  ) {
    this.#entries = new FifoMap(capacity);
  }

  get(id: string): Promise<ConnectionRecord | undefined> {
    const cached = this.#entries.get(id);
    return cached === undefined ? this.#fill(id) : Promise.resolve(cached);
  }

  written(record: ConnectionRecord): void {
    this.#writeEpoch++;
    const cached = this.#entries.get(record.id);
    if (cached === undefined || cached.version <= record.version) this.#entries.set(record.id, record);
  }

  async #fill(id: string): Promise<ConnectionRecord | undefined> {
    const epoch = this.#writeEpoch;
    const record = await this.load(id);
    if (record === undefined) return undefined;
    const cached = this.#entries.get(id);
    // A write during the read may have cached a newer version, then lost it to eviction: with
    // no entry to compare against, only a read that no write overlapped may fill.
    const fresh = cached === undefined ? epoch === this.#writeEpoch : cached.version < record.version;
    if (fresh) this.#entries.set(id, record);
    return record;
  }
}

interface Waiter {
  readonly id: string;
  readonly resolve: (record: ConnectionRecord | undefined) => void;
  readonly reject: (error: unknown) => void;
}

export class BatchingCheckReader implements CheckReader {
  readonly #queue: Waiter[] = [];
  #inFlight = 0;
  #flushScheduled = false;

  constructor(
    private readonly loadMany: (ids: readonly string[]) => Promise<readonly ConnectionRecord[]>,
    private readonly maxInFlight: number,
    private readonly maxBatch = 500,
  ) {}

  get(id: string): Promise<ConnectionRecord | undefined> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ id, resolve, reject });
      // A microtask lets the calls of one event-loop turn share a query when a slot is free.
      if (!this.#flushScheduled && this.#inFlight < this.maxInFlight) {
        this.#flushScheduled = true;
        queueMicrotask(() => this.#flush());
      }
    });
  }

  written(): void {}

  #flush(): void {
    this.#flushScheduled = false;
    while (this.#queue.length > 0 && this.#inFlight < this.maxInFlight) {
      const batch = this.#queue.splice(0, this.maxBatch);
      this.#inFlight++;
      void this.#run(batch);
    }
  }

  async #run(batch: readonly Waiter[]): Promise<void> {
    try {
      const records = await this.loadMany([...new Set(batch.map((waiter) => waiter.id))]);
      const byId = new Map(records.map((record) => [record.id, record]));
      for (const waiter of batch) waiter.resolve(byId.get(waiter.id));
    } catch (error) {
      for (const waiter of batch) waiter.reject(error);
    } finally {
      this.#inFlight--;
      this.#flush();
    }
  }
}
