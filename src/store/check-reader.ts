// How getConnectionForCheck reads, per dialect, without giving up exactness.
//
// SQLite belongs to one process (the file is locked exclusively), so every write passes through
// this process and a cache that every write updates before it returns is exact. The cache is
// bounded (CHECK_CACHE_ENTRIES, least recently used out first) and keeps each entry compact.
// PostgreSQL may have several replicas writing, so nothing is cached: concurrent checks are
// coalesced into one query instead, each sent after all of its callers arrived.
//
// Recency: both LRU structures keep their order in a Map's insertion order, and a read moves the key
// to the young end (delete, then set). V8 leaves a deleted entry in its hash bucket's chain until
// the next rehash, so moving one hot key on every read makes that key's chain, and every lookup of
// it, grow with the reads (one id checked over and over cost more with every read).
// So a read moves a key only when it is no longer among the youngest quarter of the capacity: an
// entry read within the last three quarters of the capacity's insertions is still never evicted,
// and a hot key moves at most a few times between rehashes.

import type { ConnectionRecord } from "./store.js";

export interface CheckReader {
  get(id: string): Promise<ConnectionRecord | undefined>;
  /** Called after a write of `record` committed and before the write returns. */
  written(record: ConnectionRecord): void;
}

/** Insertions and moves a key may lag behind the young end before a read moves it again. */
function settledAge(capacity: number): number {
  return 1 + (capacity >> 2);
}

interface LruEntry<V> {
  readonly value: V;
  /** The map's insertion count when this entry was last put at the young end. */
  movedAt: number;
}

/** A bounded map that forgets the least recently used entry first (a read counts as a use). */
export class LruMap<K, V> {
  readonly #entries = new Map<K, LruEntry<V>>();
  readonly #settledAge: number;
  #tick = 0;

  constructor(readonly capacity: number) {
    this.#settledAge = settledAge(capacity);
  }

  get size(): number {
    return this.#entries.size;
  }

  get(key: K): V | undefined {
    const entry = this.#entries.get(key);
    if (entry === undefined) return undefined;
    if (this.#tick - entry.movedAt > this.#settledAge) {
      // A Map iterates in insertion order: re-inserting moves the key to the young end.
      this.#entries.delete(key);
      this.#entries.set(key, entry);
      entry.movedAt = this.#tick++;
    }
    return entry.value;
  }

  /** Without counting as a use. */
  peek(key: K): V | undefined {
    return this.#entries.get(key)?.value;
  }

  set(key: K, value: V): void {
    if (!this.#entries.delete(key) && this.#entries.size >= this.capacity) {
      const oldest = this.#entries.keys().next();
      if (oldest.done !== true) this.#entries.delete(oldest.value);
    }
    this.#entries.set(key, { value, movedAt: this.#tick++ });
  }
}

interface Status {
  readonly state: ConnectionRecord["state"];
  readonly scopes: readonly string[];
}

const TEXT_SEPARATOR = "\u0000";
const INITIAL_SLOTS = 1024;

/**
 * The cached Connections in columns: typed arrays for the numbers (organization and status
 * indexes, version, the four times), one string per entry for name, creator and request id, and
 * a Map from id to slot whose insertion order is the recency order. No object per entry: about a
 * fifth of the heap of ConnectionRecords (bench/check-cache-footprint.ts; figures in docs/performance.md).
 */
class ConnectionTable {
  readonly #slots = new Map<string, number>();
  readonly #organizationIndex = new Map<string, number>();
  readonly #organizations: string[] = [];
  readonly #statusIndex = new Map<string, number>();
  readonly #statuses: Status[] = [];
  #source = new Int32Array(0);
  #destination = new Int32Array(0);
  #status = new Uint16Array(0);
  #version = new Int32Array(0);
  /** The insertion count when the slot's id was last put at the young end (see the file's comment). */
  #movedAt = new Float64Array(0);
  /** create, update, activate, deactivate per slot, in ms; NaN when unset. */
  #times = new Float64Array(0);
  /** name NUL creator NUL createRequestId, or a JSON array when one of them holds a NUL. */
  #text: string[] = [];
  #allocated = 0;
  #tick = 0;
  readonly #settledAge: number;

  constructor(readonly capacity: number) {
    this.#settledAge = settledAge(capacity);
  }

  /** The cached version, without counting as a use. */
  version(id: string): number | undefined {
    const slot = this.#slots.get(id);
    return slot === undefined ? undefined : (this.#version[slot] as number);
  }

  get(id: string): ConnectionRecord | undefined {
    const slot = this.#slots.get(id);
    if (slot === undefined) return undefined;
    if (this.#tick - (this.#movedAt[slot] as number) > this.#settledAge) {
      // A Map iterates in insertion order: re-inserting moves the id to the young end.
      this.#slots.delete(id);
      this.#slots.set(id, slot);
      this.#movedAt[slot] = this.#tick++;
    }
    const status = this.#statuses[this.#status[slot] as number] as Status;
    const [name = "", creator = "", createRequestId = ""] = unpackText(this.#text[slot] as string);
    const at = (field: number) => {
      const ms = this.#times[slot * 4 + field] as number;
      return Number.isNaN(ms) ? undefined : new Date(ms);
    };
    return {
      id,
      sourceOrganizationId: this.#organizations[this.#source[slot] as number] as string,
      destinationOrganizationId: this.#organizations[this.#destination[slot] as number] as string,
      name,
      scopes: status.scopes,
      state: status.state,
      createTime: at(0) as Date,
      updateTime: at(1) as Date,
      activateTime: at(2),
      deactivateTime: at(3),
      creator,
      createRequestId,
      version: this.#version[slot] as number,
    };
  }

  set(record: ConnectionRecord): void {
    // Organizations are interned; past twice the capacity most of them belong to evicted entries.
    if (this.#organizations.length > 2 * this.capacity + 2) this.#clear();
    let slot = this.#slots.get(record.id);
    if (slot !== undefined) {
      this.#slots.delete(record.id);
    } else if (this.#slots.size >= this.capacity) {
      const oldest = this.#slots.entries().next().value as [string, number];
      this.#slots.delete(oldest[0]);
      slot = oldest[1];
    } else {
      slot = this.#slots.size;
      if (slot >= this.#allocated) this.#grow();
    }
    this.#slots.set(record.id, slot);
    this.#movedAt[slot] = this.#tick++;
    this.#source[slot] = this.#organization(record.sourceOrganizationId);
    this.#destination[slot] = this.#organization(record.destinationOrganizationId);
    this.#status[slot] = this.#statusOf(record.state, record.scopes);
    this.#version[slot] = record.version;
    this.#times[slot * 4] = record.createTime.getTime();
    this.#times[slot * 4 + 1] = record.updateTime.getTime();
    this.#times[slot * 4 + 2] = record.activateTime?.getTime() ?? Number.NaN;
    this.#times[slot * 4 + 3] = record.deactivateTime?.getTime() ?? Number.NaN;
    this.#text[slot] = packText(record.name, record.creator, record.createRequestId);
  }

  #organization(id: string): number {
    let index = this.#organizationIndex.get(id);
    if (index === undefined) {
      index = this.#organizations.push(id) - 1;
      this.#organizationIndex.set(id, index);
    }
    return index;
  }

  #statusOf(state: ConnectionRecord["state"], scopes: readonly string[]): number {
    const key = `${state} ${scopes.join(" ")}`;
    let index = this.#statusIndex.get(key);
    if (index === undefined) {
      index = this.#statuses.push(Object.freeze({ state, scopes: Object.freeze([...scopes]) })) - 1;
      this.#statusIndex.set(key, index);
    }
    return index;
  }

  #grow(): void {
    const slots = Math.min(Math.max(INITIAL_SLOTS, this.#allocated * 2), this.capacity);
    const grown = <T extends Int32Array | Uint16Array | Float64Array>(old: T, make: (n: number) => T, width = 1) => {
      const array = make(slots * width);
      array.set(old);
      return array;
    };
    this.#source = grown(this.#source, (n) => new Int32Array(n));
    this.#destination = grown(this.#destination, (n) => new Int32Array(n));
    this.#status = grown(this.#status, (n) => new Uint16Array(n));
    this.#version = grown(this.#version, (n) => new Int32Array(n));
    this.#movedAt = grown(this.#movedAt, (n) => new Float64Array(n));
    this.#times = grown(this.#times, (n) => new Float64Array(n), 4);
    this.#allocated = slots;
  }

  #clear(): void {
    this.#slots.clear();
    this.#organizationIndex.clear();
    this.#organizations.length = 0;
    this.#text = [];
  }
}

/** Marks the JSON form, used when a field holds a NUL or would be mistaken for the mark. */
const JSON_TEXT = "\u0001";

/** One flat string (a join, not a template literal, which would keep a tree of pieces per entry). */
function packText(name: string, creator: string, createRequestId: string): string {
  const fields = [name, creator, createRequestId];
  const plain = !name.startsWith(JSON_TEXT) && !fields.some((field) => field.includes(TEXT_SEPARATOR));
  return plain ? fields.join(TEXT_SEPARATOR) : JSON_TEXT + JSON.stringify(fields);
}

function unpackText(text: string): string[] {
  return text.startsWith(JSON_TEXT) ? (JSON.parse(text.slice(1)) as string[]) : text.split(TEXT_SEPARATOR);
}

export const DEFAULT_CHECK_CACHE_ENTRIES = 200_000;

export class CachingCheckReader implements CheckReader {
  readonly #entries: ConnectionTable;
  /** Counts writes into the cache, so a fill can tell whether one raced with its read. */
  #writeEpoch = 0;

  constructor(
    private readonly load: (id: string) => Promise<ConnectionRecord | undefined>,
    capacity = DEFAULT_CHECK_CACHE_ENTRIES,
  ) {
    this.#entries = new ConnectionTable(capacity);
  }

  get(id: string): Promise<ConnectionRecord | undefined> {
    const cached = this.#entries.get(id);
    return cached === undefined ? this.#fill(id) : Promise.resolve(cached);
  }

  written(record: ConnectionRecord): void {
    this.#writeEpoch++;
    const cached = this.#entries.version(record.id);
    if (cached === undefined || cached <= record.version) this.#entries.set(record);
  }

  async #fill(id: string): Promise<ConnectionRecord | undefined> {
    const epoch = this.#writeEpoch;
    const record = await this.load(id);
    if (record === undefined) return undefined;
    const cached = this.#entries.version(id);
    // A write during the read may have cached a newer version, then lost it to eviction: with
    // no entry to compare against, only a read that no write overlapped may fill.
    const fresh = cached === undefined ? epoch === this.#writeEpoch : cached < record.version;
    if (fresh) this.#entries.set(record);
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
