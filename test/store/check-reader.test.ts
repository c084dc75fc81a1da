// The two ways getConnectionForCheck reads, driven by hand so every interleaving is exact.

import { describe, expect, it } from "vitest";
import { BatchingCheckReader, CachingCheckReader, LruMap } from "../../src/store/check-reader.js";
import type { ConnectionRecord } from "../../src/store/store.js";
import { connectionRecord } from "./fixtures.js";

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
    // Reads of a key among the youngest do not move it (see check-reader.ts): it must still stay.
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

  it("peek does not count as a use", () => {
    const map = new LruMap<string, number>(2);
    map.set("a", 1);
    map.set("b", 2);
    map.peek("a");
    map.set("c", 3);
    expect(map.peek("a")).toBeUndefined();
  });
});

describe("CachingCheckReader", () => {
  const v1 = connectionRecord("org_a", "org_b");
  const v2 = version(v1, 2);

  it("reads once, then answers from the cache", async () => {
    let loads = 0;
    const reader = new CachingCheckReader(async () => {
      loads++;
      return v1;
    });
    expect(await reader.get(v1.id)).toEqual(v1);
    expect(await reader.get(v1.id)).toEqual(v1);
    expect(loads).toBe(1);
  });

  it("does not remember a miss", async () => {
    let loads = 0;
    const reader = new CachingCheckReader(async () => {
      loads++;
      return undefined;
    });
    await reader.get("cxn_x");
    await reader.get("cxn_x");
    expect(loads).toBe(2);
  });

  it("serves a write at once", async () => {
    const reader = new CachingCheckReader(async () => v1);
    await reader.get(v1.id);
    reader.written(v2);
    expect(await reader.get(v1.id)).toEqual(v2);
  });

  it("keeps a write that raced with a slower read of the older version", async () => {
    const load = deferred<ConnectionRecord | undefined>();
    const reader = new CachingCheckReader(() => load.promise);
    const staleRead = reader.get(v1.id);
    reader.written(v2);
    load.resolve(v1);
    expect(await staleRead).toEqual(v1);
    expect(await reader.get(v1.id)).toEqual(v2);
  });

  it("does not fill from a read that a write overlapped, even once that write was evicted", async () => {
    const loads = [deferred<ConnectionRecord | undefined>(), deferred<ConnectionRecord | undefined>()];
    let call = 0;
    const reader = new CachingCheckReader(() => (loads[call++] as (typeof loads)[number]).promise, 1);
    const staleRead = reader.get(v1.id);
    reader.written(v2);
    reader.written(connectionRecord("org_c", "org_d"));
    loads[0]?.resolve(v1);
    await staleRead;
    const fresh = reader.get(v1.id);
    loads[1]?.resolve(v2);
    expect(await fresh).toEqual(v2);
    expect(call).toBe(2);
  });

  it("fills from a read that no write overlapped", async () => {
    const load = deferred<ConnectionRecord | undefined>();
    let loads = 0;
    const reader = new CachingCheckReader(() => {
      loads++;
      return load.promise;
    });
    const read = reader.get(v1.id);
    load.resolve(v1);
    await read;
    await reader.get(v1.id);
    expect(loads).toBe(1);
  });

  it("answers exactly what was written, every field (the entry is stored compact)", async () => {
    const reader = new CachingCheckReader(async () => undefined);
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
    let loads = 0;
    const stored = new Map<string, ConnectionRecord>();
    const reader = new CachingCheckReader(async (id) => {
      loads++;
      return stored.get(id);
    }, 2);
    const [a, b, c] = [
      connectionRecord("org_a", "org_b"),
      connectionRecord("org_a", "org_c"),
      connectionRecord("org_a", "org_d"),
    ];
    for (const record of [a, b, c]) stored.set(record.id, record);
    reader.written(a);
    reader.written(b);
    await reader.get(a.id);
    reader.written(c);
    expect(loads).toBe(0);
    expect(await reader.get(a.id)).toEqual(a);
    expect(await reader.get(c.id)).toEqual(c);
    expect(loads).toBe(0);
    expect(await reader.get(b.id)).toEqual(b);
    expect(loads).toBe(1);
  });

  it("keeps the newer of two writes that report out of order", async () => {
    const reader = new CachingCheckReader(async () => undefined);
    reader.written(v2);
    reader.written(v1);
    expect(await reader.get(v1.id)).toEqual(v2);
  });
});

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
