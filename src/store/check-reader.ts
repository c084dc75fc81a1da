// How getConnectionForCheck reads, per dialect, without giving up exactness.
//
// SQLite belongs to one process (the file is locked exclusively), so every write passes through
// this process and a cache that every write updates before it returns is exact. The cache is
// bounded (CHECK_CACHE_ENTRIES, about the least recently used out first) and keeps each entry
// compact. A miss reads the committed row synchronously through a prepared statement
// (CheckSource) and fills the cache in the same step, so no write can land between the read and
// the fill; while a write's transaction is open on the one connection, a read could see its
// uncommitted rows, so a miss then waits for the connection instead. Once the cache is full, a
// miss is kept only when the same id missed recently too (RecentMisses): when the checked ids
// outnumber the cache, keeping every miss would evict on every miss for entries that are mostly
// evicted again before they are checked again, and the eviction, the entry's encoding and the
// garbage it leaves cost more CPU than the read.
// PostgreSQL may have several replicas writing, so nothing is cached: concurrent checks are
// coalesced into one query instead, each sent after all of its callers arrived.
//
// Which entry leaves when the cache is full: the clock algorithm (second chance), an
// approximation of least recently used in which a hit only sets a bit of its own slot (SlotList).
// (Evicting by a Map's insertion order instead, `keys().next()` on the oldest key, walks over every
// entry deleted since the Map's last rehash: with a full cache that grew to a large fraction of a
// millisecond per miss.) The index from id to slot is a table of hashes in a typed array, not a
// Map, so that looking up an id the cache does not hold, which every miss does, reads no other
// id's string.

import type { ConnectionRecord } from "./store.js";

export interface CheckReader {
  get(id: string): Promise<ConnectionRecord | undefined>;
  /** Answers in the order of `ids`, undefined where there is no such Connection. */
  getMany(ids: readonly string[]): Promise<(ConnectionRecord | undefined)[]>;
  /** Called after a write of `record` committed and before the write returns. */
  written(record: ConnectionRecord): void;
  /** The cache's counters since start; undefined for a reader without a cache. */
  cacheStats(): CheckCacheStats | undefined;
}

export interface CheckCacheStats {
  /** Reads (checks and GetConnection) answered from the cache. */
  readonly hits: number;
  /** Reads (checks and GetConnection) that read the database. */
  readonly misses: number;
  /** Connections that left the cache to make room. */
  readonly evictions: number;
  readonly entries: number;
}

const NONE = -1;
const INITIAL_SLOTS = 1024;

/** A copy of `old` with room for `length` elements. */
function grown<T extends Uint8Array | Uint16Array | Int32Array | Float64Array>(old: T, length: number): T {
  const array = new (old.constructor as new (length: number) => T)(length);
  array.set(old);
  return array;
}

/** The next allocation: doubling, at least INITIAL_SLOTS, never past the capacity. */
function nextAllocation(allocated: number, capacity: number): number {
  return Math.min(Math.max(INITIAL_SLOTS, allocated * 2), capacity);
}

/**
 * A string's 32-bit FNV-1a hash, its bits then mixed (murmur3's finalizer) so that ids differing
 * only in their last characters spread over a table's low bits.
 */
export function hashString(key: string): number {
  let hash = 0x811c9dc5;
  for (let index = 0; index < key.length; index++) hash = Math.imul(hash ^ key.charCodeAt(index), 0x01000193);
  hash = Math.imul(hash ^ (hash >>> 16), 0x85ebca6b);
  hash = Math.imul(hash ^ (hash >>> 13), 0xc2b2ae35);
  return hash ^ (hash >>> 16);
}

/**
 * Keys in slots 0 .. capacity-1, and which of them to reuse when full, with no object made per key.
 *
 * The choice is the clock algorithm (second chance), an approximation of least recently used: a
 * use sets its slot's bit, and a new key takes the first slot at or after the clock's hand whose
 * bit is clear, clearing the set bits it passes. A use so writes one byte of its own slot; a
 * doubly linked list kept in exact recency order relinked the slot and its two neighbours on every
 * hit, random memory reads that cost a cached check 0.3-1.5 µs here (docs/performance.md, Scale).
 *
 * The index from key to slot is an open-addressing table (linear probing, at most half full) that
 * holds each key's hash beside its slot, so a lookup compares hashes in one typed array and reads a
 * key string only when the hashes match. A Map would load the strings of its bucket's chain: for a
 * key it does not hold (every cache miss) that is one or two random memory reads.
 */
class SlotList<K extends string> {
  readonly #keys: K[] = [];
  /** Per slot: its key's hash. */
  #hashes = new Int32Array(0);
  /** Per slot: 1 when used since the hand last passed it. */
  #used = new Uint8Array(0);
  /** Per position: a hash, then the slot + 1 that holds the key (0: an empty position). */
  #index = new Int32Array(0);
  #positionMask = 0;
  #size = 0;
  /** The next slot to consider for reuse. */
  #hand = 0;
  /** Keys that left to make room for others, since start. */
  evictions = 0;

  constructor(readonly capacity: number) {
    this.#allocate(nextAllocation(0, capacity));
  }

  get size(): number {
    return this.#size;
  }

  /** The key's slot, marked as used. */
  use(key: K): number | undefined {
    const slot = this.#find(key, hashString(key));
    if (slot === NONE) return undefined;
    this.#used[slot] = 1;
    return slot;
  }

  /** The key's slot, without counting as a use. */
  peek(key: K, hash = hashString(key)): number | undefined {
    const slot = this.#find(key, hash);
    return slot === NONE ? undefined : slot;
  }

  /** The key's slot, marked as used; when full, a new key takes the slot the clock gives up. */
  claim(key: K, hash = hashString(key)): number {
    let slot = this.#find(key, hash);
    if (slot !== NONE) {
      this.#used[slot] = 1;
      return slot;
    }
    if (this.#size >= this.capacity) {
      slot = this.#victim();
      this.#remove(slot);
      this.evictions++;
    } else {
      if (this.#size >= this.#used.length) this.#allocate(nextAllocation(this.#used.length, this.capacity));
      slot = this.#size++;
    }
    this.#keys[slot] = key;
    this.#hashes[slot] = hash;
    // Unused: the hand reaches it last, after every other slot.
    this.#used[slot] = 0;
    this.#insert(hash, slot);
    return slot;
  }

  clear(): void {
    this.#keys.length = 0;
    this.#index.fill(0);
    this.#size = 0;
    this.#hand = 0;
  }

  /** The first slot from the hand on not used since the hand last passed it; clears the bits it passes. */
  #victim(): number {
    for (;;) {
      const slot = this.#hand;
      this.#hand = slot + 1 === this.#size ? 0 : slot + 1;
      if (this.#used[slot] === 0) return slot;
      this.#used[slot] = 0;
    }
  }

  #find(key: K, hash: number): number {
    const index = this.#index;
    for (let position = hash & this.#positionMask; ; position = (position + 1) & this.#positionMask) {
      const stored = index[2 * position + 1] as number;
      if (stored === 0) return NONE;
      if (index[2 * position] === hash && this.#keys[stored - 1] === key) return stored - 1;
    }
  }

  #insert(hash: number, slot: number): void {
    const index = this.#index;
    let position = hash & this.#positionMask;
    while (index[2 * position + 1] !== 0) position = (position + 1) & this.#positionMask;
    index[2 * position] = hash;
    index[2 * position + 1] = slot + 1;
  }

  /** Takes `slot` out of the index, moving later entries of its probe run back (no tombstones). */
  #remove(slot: number): void {
    const index = this.#index;
    const mask = this.#positionMask;
    let hole = (this.#hashes[slot] as number) & mask;
    while (index[2 * hole + 1] !== slot + 1) hole = (hole + 1) & mask;
    for (let position = (hole + 1) & mask; index[2 * position + 1] !== 0; position = (position + 1) & mask) {
      const home = (index[2 * position] as number) & mask;
      // The entry may fill the hole only if the hole lies on its probe path (from home to here).
      if (((position - home) & mask) >= ((position - hole) & mask)) {
        index[2 * hole] = index[2 * position] as number;
        index[2 * hole + 1] = index[2 * position + 1] as number;
        hole = position;
      }
    }
    index[2 * hole + 1] = 0;
  }

  /** Room for `slots` slots, and an index of at least twice as many positions. */
  #allocate(slots: number): void {
    this.#hashes = grown(this.#hashes, slots);
    this.#used = grown(this.#used, slots);
    let positions = 16;
    while (positions < 2 * slots) positions *= 2;
    this.#index = new Int32Array(2 * positions);
    this.#positionMask = positions - 1;
    for (let slot = 0; slot < this.#size; slot++) this.#insert(this.#hashes[slot] as number, slot);
  }
}

const MIN_RECENT_MISS_SLOTS = 1024;

/**
 * Which ids missed recently: a direct-mapped table of 32-bit hashes (hashString) of missed ids, at
 * least as many slots as the cache has entries (and MIN_RECENT_MISS_SLOTS). An id stays noted
 * until a later miss lands on its slot, so "recently" means within about that many misses. A
 * collision of two ids' hashes only lets an id in one miss early.
 */
export class RecentMisses {
  readonly #hashes: Int32Array;
  readonly #mask: number;

  constructor(capacity: number) {
    let slots = MIN_RECENT_MISS_SLOTS;
    while (slots < capacity) slots *= 2;
    this.#hashes = new Int32Array(slots);
    this.#mask = slots - 1;
  }

  /** Whether `id` missed recently; notes it if not. */
  again(id: string, idHash = hashString(id)): boolean {
    // 0 marks an empty slot.
    const hash = idHash || 1;
    const slot = hash & this.#mask;
    if (this.#hashes[slot] === hash) return true;
    this.#hashes[slot] = hash;
    return false;
  }
}

/** A bounded map that forgets about the least recently used entry first (SlotList; a read counts as a use). */
export class LruMap<K extends string, V> {
  readonly #order: SlotList<K>;
  readonly #values: V[] = [];

  constructor(readonly capacity: number) {
    this.#order = new SlotList(capacity);
  }

  get size(): number {
    return this.#order.size;
  }

  get(key: K): V | undefined {
    const slot = this.#order.use(key);
    return slot === undefined ? undefined : this.#values[slot];
  }

  /** Without counting as a use. */
  peek(key: K): V | undefined {
    const slot = this.#order.peek(key);
    return slot === undefined ? undefined : this.#values[slot];
  }

  set(key: K, value: V): void {
    this.#values[this.#order.claim(key)] = value;
  }
}

interface Status {
  readonly state: ConnectionRecord["state"];
  readonly scopes: readonly string[];
}

const TEXT_SEPARATOR = "\u0000";

/**
 * The cached Connections in columns: typed arrays for the numbers (organization and status
 * indexes, version, the four times), one string per entry for name, creator and request id, and
 * a SlotList from id to slot. No object per entry: about a fifth of the heap of ConnectionRecords
 * (bench/check-cache-footprint.ts; figures in docs/performance.md).
 */
class ConnectionTable {
  readonly #slots: SlotList<string>;
  readonly #organizationIndex = new Map<string, number>();
  readonly #organizations: string[] = [];
  readonly #statusIndex = new Map<string, number>();
  readonly #statuses: Status[] = [];
  #source = new Int32Array(0);
  #destination = new Int32Array(0);
  #status = new Uint16Array(0);
  #version = new Int32Array(0);
  /** create, update, activate, deactivate per slot, in ms; NaN when unset. */
  #times = new Float64Array(0);
  /** name NUL creator NUL createRequestId, or a JSON array when one of them holds a NUL. */
  #text: string[] = [];
  constructor(readonly capacity: number) {
    this.#slots = new SlotList(capacity);
  }

  /** Connections that left the table to make room for others, since start. */
  get evictions(): number {
    return this.#slots.evictions;
  }

  get size(): number {
    return this.#slots.size;
  }

  get full(): boolean {
    return this.#slots.size >= this.capacity;
  }

  get(id: string): ConnectionRecord | undefined {
    const slot = this.#slots.use(id);
    if (slot === undefined) return undefined;
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

  /** Keeps `record` unless a newer version of it is cached. */
  keep(record: ConnectionRecord, hash = hashString(record.id)): void {
    const slot = this.#slots.peek(record.id, hash);
    if (slot === undefined || (this.#version[slot] as number) <= record.version) this.#set(record, hash);
  }

  #set(record: ConnectionRecord, hash: number): void {
    // Organizations are interned; past twice the capacity most of them belong to evicted entries.
    if (this.#organizations.length > 2 * this.capacity + 2) this.#clear();
    const slot = this.#slots.claim(record.id, hash);
    if (slot >= this.#version.length) this.#grow();
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
    const slots = nextAllocation(this.#version.length, this.capacity);
    this.#source = grown(this.#source, slots);
    this.#destination = grown(this.#destination, slots);
    this.#status = grown(this.#status, slots);
    this.#version = grown(this.#version, slots);
    this.#times = grown(this.#times, slots * 4);
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

/** Chosen from the cache's measured cost per entry (docs/performance.md). */
export const DEFAULT_CHECK_CACHE_ENTRIES = 500_000;

/** Where the cache reads what it misses: committed rows, synchronously. */
export interface CheckSource {
  /** False while a transaction is open on the connection: a read now could see its uncommitted rows. */
  idle(): boolean;
  /** The Connection `id`: one primary-key read. */
  one(id: string): ConnectionRecord | undefined;
  /** The Connections among `ids` (distinct) that exist, in any order: one statement. */
  many(ids: readonly string[]): ConnectionRecord[];
  /** Runs `read` once no transaction is open on the connection. */
  whenIdle<T>(read: () => T): Promise<T>;
}

export class CachingCheckReader implements CheckReader {
  readonly #entries: ConnectionTable;
  /** Made when the cache first fills up: a cache that never does needs none. */
  #recentMisses: RecentMisses | undefined;

  constructor(
    private readonly source: CheckSource,
    capacity = DEFAULT_CHECK_CACHE_ENTRIES,
  ) {
    this.#entries = new ConnectionTable(capacity);
  }

  #hits = 0;
  #misses = 0;

  get(id: string): Promise<ConnectionRecord | undefined> {
    const cached = this.#entries.get(id);
    if (cached !== undefined) {
      this.#hits++;
      return Promise.resolve(cached);
    }
    this.#misses++;
    return this.#read(() => this.#fillOne(id));
  }

  getMany(ids: readonly string[]): Promise<(ConnectionRecord | undefined)[]> {
    const answers: (ConnectionRecord | undefined)[] = new Array(ids.length);
    const missing = new Set<string>();
    for (let index = 0; index < ids.length; index++) {
      const id = ids[index] as string;
      const cached = this.#entries.get(id);
      if (cached === undefined) missing.add(id);
      else answers[index] = cached;
    }
    this.#hits += ids.length - missing.size;
    this.#misses += missing.size;
    if (missing.size === 0) return Promise.resolve(answers);
    const fill = () => {
      const read = new Map<string, ConnectionRecord>();
      for (const record of this.source.many([...missing])) {
        this.#keepRead(record);
        read.set(record.id, record);
      }
      for (let index = 0; index < ids.length; index++) {
        if (answers[index] === undefined) answers[index] = read.get(ids[index] as string);
      }
      return answers;
    };
    return this.#read(fill);
  }

  cacheStats(): CheckCacheStats {
    return { hits: this.#hits, misses: this.#misses, evictions: this.#entries.evictions, entries: this.#entries.size };
  }

  written(record: ConnectionRecord): void {
    this.#entries.keep(record);
  }

  /** Runs `read` now, or once no transaction is open; its failure rejects, never throws. */
  #read<T>(read: () => T): Promise<T> {
    if (!this.source.idle()) return this.source.whenIdle(read);
    try {
      return Promise.resolve(read());
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** Read and kept in one synchronous step: no write can come between them. */
  #fillOne(id: string): ConnectionRecord | undefined {
    const record = this.source.one(id);
    if (record !== undefined) this.#keepRead(record);
    return record;
  }

  /** Keeps what a miss read while there is room, and once full only ids that missed recently too. */
  #keepRead(record: ConnectionRecord): void {
    const hash = hashString(record.id);
    if (this.#entries.full) {
      this.#recentMisses ??= new RecentMisses(this.#entries.capacity);
      if (!this.#recentMisses.again(record.id, hash)) return;
    }
    this.#entries.keep(record, hash);
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

  getMany(ids: readonly string[]): Promise<(ConnectionRecord | undefined)[]> {
    // Asked in one turn of the event loop, so they share one query.
    return Promise.all(ids.map((id) => this.get(id)));
  }

  written(): void {}

  cacheStats(): undefined {
    return undefined;
  }

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
