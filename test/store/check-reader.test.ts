// The two ways getConnectionForCheck reads, driven by hand so every interleaving is exact.

import SqliteDatabase from "better-sqlite3";
import { Kysely, SqliteDialect, sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import {
  BatchingCheckReader,
  CachingCheckReader,
  type CheckSource,
  hashString,
  LruMap,
  RecentMisses,
} from "../../src/store/check-reader.js";
import { KyselyStore } from "../../src/store/kysely-store.js";
import { migrateToLatest } from "../../src/store/migrations.js";
import type { Database } from "../../src/store/schema.js";
import { RowidIndex, SqliteCheckSource, timeOf } from "../../src/store/sqlite-check-source.js";
import type { ConnectionRecord } from "../../src/store/store.js";
import { connectionRecord, createdEvent, newOrganization, transition } from "./fixtures.js";

function deferred<T>() {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

function version(record: ConnectionRecord, v: number): ConnectionRecord {
  return { ...record, version: v };
}

/** The clock algorithm, written plainly: the reference LruMap must match. */
class ClockModel {
  readonly #keys: string[] = [];
  readonly #used: boolean[] = [];
  readonly #values = new Map<string, number>();
  #hand = 0;

  constructor(readonly capacity: number) {}

  get size(): number {
    return this.#values.size;
  }

  peek(key: string): number | undefined {
    return this.#values.get(key);
  }

  get(key: string): number | undefined {
    const at = this.#keys.indexOf(key);
    if (at >= 0) this.#used[at] = true;
    return this.#values.get(key);
  }

  set(key: string, value: number): void {
    let slot = this.#keys.indexOf(key);
    if (slot >= 0) {
      this.#used[slot] = true;
    } else if (this.#keys.length < this.capacity) {
      slot = this.#keys.push(key) - 1;
      this.#used[slot] = false;
    } else {
      for (;;) {
        slot = this.#hand;
        this.#hand = (this.#hand + 1) % this.capacity;
        if (!this.#used[slot]) break;
        this.#used[slot] = false;
      }
      this.#values.delete(this.#keys[slot] as string);
      this.#keys[slot] = key;
      this.#used[slot] = false;
    }
    this.#values.set(key, value);
  }
}

describe("LruMap", () => {
  it("forgets the least recently used first: a read or an update counts as a use", () => {
    const map = new LruMap<string, number>(2);
    map.set("a", 1);
    map.set("b", 2);
    map.get("a");
    map.set("c", 3);
    expect([map.peek("a"), map.peek("b"), map.peek("c")]).toEqual([1, undefined, 3]);
    map.set("a", 4);
    map.set("d", 5);
    expect([map.peek("a"), map.peek("c"), map.peek("d")]).toEqual([4, undefined, 5]);
    expect(map.size).toBe(2);
  });

  it("keeps a key read again and again while newer keys push the others out", () => {
    // Each read sets its bit again, so the clock always passes it over.
    const map = new LruMap<string, number>(100);
    for (let key = 0; key < 100; key++) map.set(`k${key}`, key);
    for (let added = 100; added < 1_000; added++) {
      expect(map.get("hot")).toBe(added === 100 ? undefined : 1);
      if (added === 100) map.set("hot", 1);
      map.set(`k${added}`, added);
    }
    expect(map.size).toBe(100);
    expect(map.peek("k900")).toBeUndefined();
    expect(map.peek("k901")).toBe(901);
  });

  it("gives a key used since the clock's hand last passed it a second chance; unused keys leave first in, first out", () => {
    const map = new LruMap<string, number>(3);
    map.set("a", 1);
    map.set("b", 2);
    map.set("c", 3);
    map.get("b");
    map.set("d", 4); // the hand passes a (unused): a leaves
    map.set("e", 5); // b was used: its bit is cleared and it stays; c leaves
    expect(["a", "b", "c", "d", "e"].map((key) => map.peek(key))).toEqual([undefined, 2, undefined, 4, 5]);
    map.set("f", 6); // the hand is back at the start: d, unused, leaves
    map.set("g", 7); // b, not used again since its second chance, leaves
    expect(["b", "d", "e", "f", "g"].map((key) => map.peek(key))).toEqual([undefined, undefined, 5, 6, 7]);
  });

  it("evicts exactly as the clock algorithm does under random use", () => {
    // Small and large: the small one's index wraps around its end; the large one's has long probe
    // runs, which every eviction shortens by moving later entries back.
    for (const [capacity, keys, steps] of [
      [7, 20, 5_000],
      [1_500, 6_000, 60_000],
    ] as const) {
      const map = new LruMap<string, number>(capacity);
      const model = new ClockModel(capacity);
      let seed = 1;
      const random = () => {
        seed = (seed * 48271) % 2147483647;
        return `k${seed % keys}`;
      };
      for (let step = 0; step < steps; step++) {
        const key = random();
        if (step % 3 === 0) {
          map.set(key, step);
          model.set(key, step);
        } else {
          expect(map.get(key)).toBe(model.get(key));
        }
      }
      expect(map.size).toBe(model.size);
      for (let key = 0; key < keys; key++) expect(map.peek(`k${key}`)).toBe(model.peek(`k${key}`));
    }
  });

  it("peek does not count as a use", () => {
    const map = new LruMap<string, number>(2);
    map.set("a", 1);
    map.set("b", 2);
    map.peek("a");
    map.set("c", 3);
    expect(map.peek("a")).toBeUndefined();
  });
});

describe("RecentMisses", () => {
  it("answers true for an id's second miss, until later misses take its slot", () => {
    const recent = new RecentMisses(4);
    expect(recent.again("cxn_a")).toBe(false);
    expect(recent.again("cxn_a")).toBe(true);
    expect(recent.again("cxn_a")).toBe(true);
    // 1,024 slots: ten thousand other ids leave no room for it.
    for (let other = 0; other < 10_000; other++) recent.again(`cxn_${other}`);
    expect(recent.again("cxn_a")).toBe(false);
    expect(recent.again("cxn_a")).toBe(true);
  });
});

/**
 * A CheckSource over a map of committed rows, with a transaction that the test opens and ends by
 * hand; counts the reads and the ids each batch read asked for.
 */
class FakeSource implements CheckSource {
  readonly committed = new Map<string, ConnectionRecord>();
  transactionOpen = false;
  singleReads = 0;
  readonly batches: string[][] = [];
  readonly #waiting: (() => void)[] = [];

  constructor(...records: ConnectionRecord[]) {
    for (const record of records) this.commit(record);
  }

  commit(record: ConnectionRecord): void {
    this.committed.set(record.id, record);
  }

  idle(): boolean {
    return !this.transactionOpen;
  }

  one(id: string): ConnectionRecord | undefined {
    expect(this.transactionOpen).toBe(false);
    this.singleReads++;
    return this.committed.get(id);
  }

  many(ids: readonly string[]): ConnectionRecord[] {
    expect(this.transactionOpen).toBe(false);
    this.batches.push([...ids]);
    return ids.flatMap((id) => this.committed.get(id) ?? []);
  }

  whenIdle<T>(read: () => T): Promise<T> {
    return new Promise((resolve) => this.#waiting.push(() => resolve(read())));
  }

  endTransaction(): void {
    this.transactionOpen = false;
    for (const run of this.#waiting.splice(0)) run();
  }
}

describe("CachingCheckReader", () => {
  const v1 = connectionRecord("org_a", "org_b");
  const v2 = version(v1, 2);

  it("reads a miss once, then answers from the cache", async () => {
    const source = new FakeSource(v1);
    const reader = new CachingCheckReader(source);
    expect(await reader.get(v1.id)).toEqual(v1);
    expect(await reader.get(v1.id)).toEqual(v1);
    expect(source.singleReads).toBe(1);
  });

  it("does not remember a miss", async () => {
    const source = new FakeSource();
    const reader = new CachingCheckReader(source);
    expect(await reader.get("cxn_x")).toBeUndefined();
    expect(await reader.get("cxn_x")).toBeUndefined();
    expect(source.singleReads).toBe(2);
  });

  it("serves a write at once", async () => {
    const source = new FakeSource(v1);
    const reader = new CachingCheckReader(source);
    await reader.get(v1.id);
    reader.written(v2);
    expect(await reader.get(v1.id)).toEqual(v2);
    expect(source.singleReads).toBe(1);
  });

  it("while a transaction is open, a miss waits for it and reads only what it committed", async () => {
    const source = new FakeSource(v1);
    const reader = new CachingCheckReader(source);
    source.transactionOpen = true;
    const during = reader.get(v1.id);
    await Promise.resolve();
    expect(source.singleReads).toBe(0);
    source.commit(v2);
    source.endTransaction();
    expect(await during).toEqual(v2);
    reader.written(v2);
    expect(await reader.get(v1.id)).toEqual(v2);
    expect(source.singleReads).toBe(1);
  });

  it("keeps a write that was reported while a miss waited, over an older read", async () => {
    const source = new FakeSource(v1);
    const reader = new CachingCheckReader(source);
    source.transactionOpen = true;
    const during = reader.get(v1.id);
    // The cache learns v2 before the committed rows show it (the fake lags on purpose).
    reader.written(v2);
    source.endTransaction();
    expect(await during).toEqual(v1);
    expect(await reader.get(v1.id)).toEqual(v2);
  });

  it("answers exactly what was written, every field (the entry is stored compact)", async () => {
    const reader = new CachingCheckReader(new FakeSource());
    const activated = {
      ...v2,
      name: 'Ünïcode "quoted" name',
      state: "ACTIVE" as const,
      activateTime: new Date(v1.createTime.getTime() + 1234),
      createRequestId: "req-1",
    };
    reader.written(activated);
    expect(await reader.get(v1.id)).toEqual(activated);
    reader.written(v1);
    expect(await reader.get(v1.id)).toEqual(activated);
    const odd = { ...v2, id: "cxn_odd", name: "\u0001a\u0000b", creator: "", version: 3 };
    reader.written(odd);
    expect(await reader.get(odd.id)).toEqual(odd);
  });

  it("is bounded and evicts the least recently checked Connection first", async () => {
    const [a, b, c] = [
      connectionRecord("org_a", "org_b"),
      connectionRecord("org_a", "org_c"),
      connectionRecord("org_a", "org_d"),
    ] as [ConnectionRecord, ConnectionRecord, ConnectionRecord];
    const source = new FakeSource(a, b, c);
    const reader = new CachingCheckReader(source, 2);
    reader.written(a);
    reader.written(b);
    await reader.get(a.id);
    reader.written(c);
    expect(await reader.get(a.id)).toEqual(a);
    expect(await reader.get(c.id)).toEqual(c);
    expect(source.singleReads).toBe(0);
    expect(await reader.get(b.id)).toEqual(b);
    expect(source.singleReads).toBe(1);
  });

  it("once full, keeps a miss only when the same id missed recently too: a one-off miss evicts nothing", async () => {
    // Fixed ids: random ones could share a slot of RecentMisses, and then one would not be kept.
    const [a, b, c, d] = ["a", "b", "c", "d"].map((name) =>
      connectionRecord("org_a", `org_${name}`, { id: `cxn_${name}` }),
    ) as [ConnectionRecord, ConnectionRecord, ConnectionRecord, ConnectionRecord];
    const source = new FakeSource(a, b, c, d);
    const reader = new CachingCheckReader(source, 2);
    // Room left: a miss is kept at once.
    expect(await reader.get(a.id)).toEqual(a);
    expect(await reader.getMany([b.id])).toEqual([b]);
    expect(source.singleReads + source.batches.length).toBe(2);
    // Full: c and d are read, answered, and not kept; a and b stay.
    expect(await reader.get(c.id)).toEqual(c);
    expect(await reader.getMany([d.id])).toEqual([d]);
    expect(await reader.getMany([a.id, b.id])).toEqual([a, b]);
    expect(source.singleReads + source.batches.length).toBe(4);
    expect(reader.cacheStats().evictions).toBe(0);
    // Missed again: now kept, in place of the least recently checked.
    expect(await reader.getMany([c.id, d.id])).toEqual([c, d]);
    expect(await reader.getMany([c.id, d.id])).toEqual([c, d]);
    expect(source.batches).toHaveLength(3);
    expect(reader.cacheStats()).toMatchObject({ evictions: 2, entries: 2 });
  });

  it("rejects (never throws) when the read fails, one id or a batch", async () => {
    const source = new FakeSource();
    const failure = new Error("disk I/O error");
    source.one = () => {
      throw failure;
    };
    source.many = () => {
      throw failure;
    };
    const reader = new CachingCheckReader(source);
    const one = reader.get("cxn_x");
    const many = reader.getMany(["cxn_x"]);
    await expect(one).rejects.toBe(failure);
    await expect(many).rejects.toBe(failure);
  });

  it("keeps the newer of two writes that report out of order", async () => {
    const reader = new CachingCheckReader(new FakeSource());
    reader.written(v2);
    reader.written(v1);
    expect(await reader.get(v1.id)).toEqual(v2);
  });

  describe("getMany", () => {
    const records = Array.from({ length: 6 }, (_, i) => connectionRecord("org_a", `org_${i}`));
    const ids = records.map((record) => record.id);

    it("reads every miss of a batch in one read of distinct ids, answering in order with duplicates and unknown ids", async () => {
      const source = new FakeSource(...records);
      const reader = new CachingCheckReader(source);
      reader.written(records[0] as ConnectionRecord);
      reader.written(records[3] as ConnectionRecord);
      const asked = [ids[0], ids[1], "cxn_unknown", ids[1], ids[3], ids[2], "cxn_unknown", ids[0]] as string[];
      const answers = await reader.getMany(asked);
      expect(answers).toEqual(asked.map((id) => source.committed.get(id)));
      expect(source.batches).toEqual([[ids[1], "cxn_unknown", ids[2]]]);
      expect(source.singleReads).toBe(0);
      // What the batch read is cached now; the unknown id is read again.
      expect(await reader.getMany([ids[2] as string, ids[1] as string])).toEqual([records[2], records[1]]);
      expect(await reader.getMany(["cxn_unknown"])).toEqual([undefined]);
      expect(source.batches).toHaveLength(2);
    });

    it("answers a batch of hits without reading", async () => {
      const source = new FakeSource();
      const reader = new CachingCheckReader(source);
      for (const record of records) reader.written(record);
      expect(await reader.getMany([...ids].reverse())).toEqual([...records].reverse());
      expect(source.batches).toEqual([]);
    });

    it("waits for an open transaction before it reads the misses", async () => {
      const source = new FakeSource(v1);
      const reader = new CachingCheckReader(source);
      reader.written(records[0] as ConnectionRecord);
      source.transactionOpen = true;
      const during = reader.getMany([v1.id, ids[0] as string]);
      await Promise.resolve();
      expect(source.batches).toEqual([]);
      source.commit(v2);
      source.endTransaction();
      expect(await during).toEqual([v2, records[0]]);
    });

    it("answers a batch larger than the cache", async () => {
      const source = new FakeSource(...records);
      const reader = new CachingCheckReader(source, 2);
      expect(await reader.getMany(ids)).toEqual(records);
      expect(await reader.getMany(ids)).toEqual(records);
    });
  });
});

describe("CachingCheckReader on SQLite (SqliteCheckSource)", () => {
  let db: Kysely<Database>;
  let sqlite: SqliteDatabase.Database;
  let writer: KyselyStore;
  let a: ConnectionRecord;
  let b: ConnectionRecord;
  let c: ConnectionRecord;

  beforeAll(async () => {
    sqlite = new SqliteDatabase(":memory:");
    db = new Kysely<Database>({ dialect: new SqliteDialect({ database: sqlite }) });
    await migrateToLatest(db as Kysely<unknown>, "sqlite");
    writer = new KyselyStore(db, { dialect: "sqlite", sqlite, inTransaction: () => sqlite.inTransaction });
    const [x, y, z] = [await newOrganization(writer), await newOrganization(writer), await newOrganization(writer)];
    a = connectionRecord(x, y, { createTime: new Date("2025-01-02T03:04:05.678Z"), name: "A" });
    b = connectionRecord(x, z, { createRequestId: "req-b", scopes: [] });
    c = connectionRecord(y, z, {
      state: "INACTIVE",
      activateTime: new Date("2025-02-03T04:05:06.789Z"),
      deactivateTime: new Date("2025-03-04T05:06:07.890Z"),
      version: 3,
    });
    for (const record of [a, b, c]) await writer.createConnection(record, createdEvent(record));
  });

  afterAll(async () => {
    await db.destroy();
  });

  /** A store on the same database whose check cache is empty. */
  const cold = () => new KyselyStore(db, { dialect: "sqlite", sqlite, inTransaction: () => sqlite.inTransaction });

  it("reads a miss, one id or a batch with duplicates and unknown ids, exactly as stored", async () => {
    const reader = cold();
    expect(await reader.getConnectionForCheck(a.id)).toEqual(a);
    expect(await reader.getConnectionForCheck("cxn_unknown")).toBeUndefined();
    expect(await reader.getConnectionsForCheck([b.id, "cxn_unknown", a.id, b.id])).toEqual([b, undefined, a, b]);
    expect(await cold().getConnectionsForCheck([b.id, "cxn_unknown", a.id, b.id])).toEqual([b, undefined, a, b]);
    expect(await cold().getConnectionForCheck(c.id)).toEqual(c);
  });

  it("reads text that JSON escapes and times at the ends of the range exactly as stored", async () => {
    const [x, y] = [await newOrganization(writer), await newOrganization(writer)];
    const odd = connectionRecord(x, y, {
      name: 'quote " backslash \\ nul \u0000 tab \t bell \u0007 separator \u2028 accents é 😀',
      creator: "user:ü\u0000\\",
      createTime: new Date("1969-12-31T23:59:59.999Z"),
      updateTime: new Date("9999-12-31T23:59:59.999Z"),
      activateTime: new Date("0001-01-01T00:00:00.001Z"),
      deactivateTime: new Date("2024-02-29T12:00:00.500Z"),
    });
    await writer.createConnection(odd, createdEvent(odd));
    expect(await cold().getConnectionForCheck(odd.id)).toEqual(odd);
    expect(await cold().getConnectionsForCheck([a.id, odd.id])).toEqual([a, odd]);
  });

  it("reads a batch of more ids than one statement binds", async () => {
    const ids = Array.from({ length: 250 }, (_, index) => `cxn_unknown_${index}`);
    ids[3] = a.id;
    ids[120] = b.id;
    ids[249] = c.id;
    const answers = await cold().getConnectionsForCheck(ids);
    expect(answers.filter((answer) => answer !== undefined)).toEqual([a, b, c]);
    expect([answers[3], answers[120], answers[249]]).toEqual([a, b, c]);
  });

  it("does not answer from a transaction that is still open, and not at all from one that rolled back", async () => {
    const reader = cold();
    const { next } = transition(a, "ACTIVE");
    let checks: Promise<unknown[]> | undefined;
    await db.connection().execute(async (connection) => {
      await sql`begin immediate`.execute(connection);
      await connection
        .updateTable("connections")
        .set({ state: next.state, version: next.version })
        .where("id", "=", a.id)
        .execute();
      checks = Promise.all([reader.getConnectionForCheck(a.id), reader.getConnectionsForCheck([b.id, a.id])]);
      await new Promise((resolve) => setTimeout(resolve, 20));
      await sql`rollback`.execute(connection);
    });
    expect(await checks).toEqual([a, [b, a]]);
    expect(await reader.getConnectionForCheck(a.id)).toEqual(a);
  });

  it("reads an id it read before by its rowid, one descent instead of the id index's and the table's", () => {
    const prepared = vi.spyOn(sqlite, "prepare");
    try {
      const source = new SqliteCheckSource(sqlite, db, 10);
      expect(source.many([a.id, b.id])).toEqual(expect.arrayContaining([a, b]));
      expect(source.one(c.id)).toEqual(c);
      const byId = prepared.mock.calls.map(([text]) => text);
      expect(byId.every((text) => / where id (=|in) /.test(text))).toBe(true);
      prepared.mockClear();
      expect(source.many([b.id, a.id, "cxn_unknown"])).toEqual(expect.arrayContaining([a, b]));
      expect(source.one(c.id)).toEqual(c);
      const texts = prepared.mock.calls.map(([text]) => text);
      expect(texts).toHaveLength(3); // seq in (?, ?), id in (?) for the unknown id, and seq = ?
      expect(texts.filter((text) => / where seq (=|in) /.test(text))).toHaveLength(2);
    } finally {
      prepared.mockRestore();
    }
  });

  it("searches by the table's integer primary key or the id index, never scanning, in every statement it prepares", () => {
    const prepared = vi.spyOn(sqlite, "prepare");
    const texts: string[] = [];
    try {
      const source = new SqliteCheckSource(sqlite, db, 10);
      for (let round = 0; round < 2; round++) {
        source.one(a.id);
        source.many([a.id, b.id, "cxn_unknown"]);
      }
      texts.push(...prepared.mock.calls.map(([text]) => text));
    } finally {
      prepared.mockRestore();
    }
    // id = ?, seq in (?), id in (?, ?), then seq = ?, seq in (?, ?), id in (?)
    expect(texts).toHaveLength(6);
    for (const text of texts) {
      const plan = sqlite
        .prepare(`explain query plan ${text}`)
        .all(...Array.from({ length: (text.match(/\?/g) ?? []).length }, () => 1)) as { detail: string }[];
      const details = plan.map((step) => step.detail).join("; ");
      expect(details, text).toMatch(
        /^SEARCH connections USING (INTEGER PRIMARY KEY \(rowid=\?\)|INDEX sqlite_autoindex_connections_\d \(id=\?\))/,
      );
      expect(details, text).not.toMatch(/SCAN/);
    }
  });

  it("answers ids whose hashes collide with each other's own rows, one at a time or in one batch", async () => {
    const [x, y] = [await newOrganization(writer), await newOrganization(writer)];
    const [firstId, secondId] = collidingIds("cxn_collide_");
    const first = connectionRecord(x, y, { id: firstId, name: "first" });
    const second = connectionRecord(y, x, { id: secondId, name: "second" });
    for (const record of [first, second]) await writer.createConnection(record, createdEvent(record));
    const source = new SqliteCheckSource(sqlite, db, 10);
    expect(source.one(first.id)).toEqual(first);
    // Placed at first's rowid by its hash: read there, found to be another's, then read by id.
    expect(source.one(second.id)).toEqual(second);
    expect(source.one(first.id)).toEqual(first);
    expect(source.many([second.id])).toEqual([second]);
    expect(source.many([first.id, second.id, a.id])).toEqual(expect.arrayContaining([first, second, a]));
    expect(source.many([first.id, second.id, a.id])).toHaveLength(3);
    expect(await cold().getConnectionsForCheck([second.id, first.id])).toEqual([second, first]);
  });
});

describe("RowidIndex", () => {
  it("answers each placed id's rowid as it grows, and nothing for an id never placed", () => {
    const index = new RowidIndex(100_000);
    for (let n = 1; n <= 20_000; n++) index.set(`cxn_${n}`, n);
    expect(index.size).toBe(20_000);
    for (let n = 1; n <= 20_000; n++) expect(index.get(`cxn_${n}`)).toBe(n);
    expect(index.get("cxn_0")).toBeUndefined();
    expect(index.get("cxn_20001")).toBeUndefined();
  });

  it("places no more than its bound: a later id takes its home position, and no id answers another's rowid unless their hashes collide", () => {
    const index = new RowidIndex(1_000);
    for (let n = 1; n <= 5_000; n++) index.set(`cxn_${n}`, n);
    // Full at half its positions, the first power of two at or past the bound.
    expect(index.size).toBe(1_024);
    let placed = 0;
    for (let n = 1; n <= 5_000; n++) {
      const rowid = index.get(`cxn_${n}`);
      if (rowid === undefined) continue;
      if (rowid === n) placed++;
      else expect(hashString(`cxn_${rowid}`)).toBe(hashString(`cxn_${n}`));
    }
    expect(placed).toBeGreaterThan(800);
  });

  it("stays at most half full however many ids it is given, so looking up an id it does not hold ends", () => {
    const index = new RowidIndex(1_000);
    for (let n = 1; n <= 100_000; n++) index.set(`cxn_${n}`, n);
    expect(index.size).toBe(1_024);
    for (let n = 100_001; n <= 110_000; n++) expect(index.get(`cxn_${n}`) ?? n).toBe(n);
  });

  it("ignores rowids an Int32Array cannot hold", () => {
    const index = new RowidIndex(10);
    index.set("cxn_big", 2 ** 31);
    index.set("cxn_zero", 0);
    expect([index.get("cxn_big"), index.get("cxn_zero"), index.size]).toEqual([undefined, undefined, 0]);
  });
});

describe("timeOf", () => {
  it("reads every time toISOString writes exactly as Date does, and leaves other text to Date", () => {
    const samples = [
      "1000-01-01T00:00:00.000Z",
      "1969-12-31T23:59:59.999Z",
      "2024-02-29T12:00:00.500Z",
      "9999-12-31T23:59:59.999Z",
      "0001-01-01T00:00:00.001Z",
      "0999-12-31T23:59:59.999Z",
      "+275760-09-13T00:00:00.000Z",
      "2026-01-01 01:02:03",
      "2026-01-01T01:02:03Z",
    ];
    let seed = 7;
    for (let n = 0; n < 10_000; n++) {
      seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
      // 1000-01-01 to 9999-12-31
      samples.push(new Date(-30_610_224_000_000 + (seed / 2 ** 31) * 283_985_308_800_000).toISOString());
    }
    for (const text of samples) expect(timeOf(text).getTime(), text).toBe(new Date(text).getTime());
  });
});

/** Two ids of the form `${prefix}${n}` whose hashes collide (a birthday search: about 2^16 ids). */
function collidingIds(prefix: string): [string, string] {
  const seen = new Map<number, string>();
  for (let n = 0; ; n++) {
    const id = `${prefix}${n}`;
    const other = seen.get(hashString(id));
    if (other !== undefined) return [other, id];
    seen.set(hashString(id), id);
  }
}

describe("BatchingCheckReader", () => {
  const records = Array.from({ length: 10 }, (_, i) => connectionRecord("org_a", `org_${i}`));

  it("sends the calls that arrive while queries are in flight as one query each time a slot frees", async () => {
    const queries: { ids: readonly string[]; done: ReturnType<typeof deferred<ConnectionRecord[]>> }[] = [];
    const reader = new BatchingCheckReader((ids) => {
      const done = deferred<ConnectionRecord[]>();
      queries.push({ ids, done });
      return done.promise;
    }, 1);
    const answer = (index: number) => {
      const query = queries[index];
      query?.done.resolve(records.filter((r) => query.ids.includes(r.id)));
    };

    const first = reader.get(records[0]?.id ?? "");
    await Promise.resolve();
    expect(queries.map((q) => q.ids)).toEqual([[records[0]?.id]]);

    // These arrive while the first query is in flight: they must not ride on it.
    const waiting = records.slice(1, 6).map((r) => reader.get(r.id));
    const unknown = reader.get("cxn_unknown");
    const repeat = reader.get(records[1]?.id ?? "");
    await Promise.resolve();
    expect(queries).toHaveLength(1);

    answer(0);
    expect(await first).toBe(records[0]);
    await Promise.resolve();
    expect(queries).toHaveLength(2);
    expect(queries[1]?.ids).toEqual([...records.slice(1, 6).map((r) => r.id), "cxn_unknown"]);
    answer(1);
    expect(await Promise.all(waiting)).toEqual(records.slice(1, 6));
    expect(await unknown).toBeUndefined();
    expect(await repeat).toBe(records[1]);
  });

  it("keeps at most maxInFlight queries going and splits batches at maxBatch", async () => {
    let inFlight = 0;
    let maxSeen = 0;
    const sizes: number[] = [];
    const reader = new BatchingCheckReader(
      async (ids) => {
        inFlight++;
        maxSeen = Math.max(maxSeen, inFlight);
        sizes.push(ids.length);
        await new Promise((resolve) => setTimeout(resolve, 5));
        inFlight--;
        return records.filter((r) => ids.includes(r.id));
      },
      3,
      4,
    );
    const answers = await Promise.all(Array.from({ length: 40 }, (_, i) => reader.get(records[i % 10]?.id ?? "")));
    expect(answers).toEqual(Array.from({ length: 40 }, (_, i) => records[i % 10]));
    expect(maxSeen).toBeLessThanOrEqual(3);
    expect(Math.max(...sizes)).toBeLessThanOrEqual(4);
  });

  it("rejects every caller of a failed query, and the next query starts afresh", async () => {
    let fail = true;
    const reader = new BatchingCheckReader(async (ids) => {
      if (fail) throw new Error("down");
      return records.filter((r) => ids.includes(r.id));
    }, 2);
    const results = await Promise.allSettled([reader.get(records[0]?.id ?? ""), reader.get(records[1]?.id ?? "")]);
    expect(results.map((r) => r.status)).toEqual(["rejected", "rejected"]);
    fail = false;
    expect(await reader.get(records[2]?.id ?? "")).toBe(records[2]);
  });
});
