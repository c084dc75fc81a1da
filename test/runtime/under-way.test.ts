import { describe, expect, it } from "vitest";
import { UnderWay, type UnderWayEntry } from "../../src/runtime/under-way.js";

interface Item {
  entry?: UnderWayEntry<Item>;
}

describe("UnderWay", () => {
  it("holds what was added and not removed, newest first", () => {
    const list = new UnderWay<{ name: string }>();
    const a = { name: "a" };
    const b = { name: "b" };
    const c = { name: "c" };
    const entryA = list.add(a);
    const entryB = list.add(b);
    list.add(c);
    expect(list.size).toBe(3);
    expect(list.values()).toEqual([c, b, a]);
    list.remove(entryB);
    expect(list.values()).toEqual([c, a]);
    list.remove(entryA);
    expect(list.values()).toEqual([c]);
    expect(list.size).toBe(1);
  });

  it("ignores an entry removed twice", () => {
    const list = new UnderWay<object>();
    const first = list.add({});
    list.add({});
    list.remove(first);
    list.remove(first);
    expect(list.size).toBe(1);
    expect(list.values()).toHaveLength(1);
  });

  it("lets a caller remove entries while it goes through the values", () => {
    const list = new UnderWay<Item>();
    const items: Item[] = Array.from({ length: 5 }, () => ({}));
    for (const item of items) item.entry = list.add(item);
    const seen: object[] = [];
    for (const item of list.values()) {
      seen.push(item);
      for (const other of items) if (other.entry !== undefined) list.remove(other.entry);
    }
    expect(seen).toHaveLength(5);
    expect(list.size).toBe(0);
    expect(list.values()).toEqual([]);
  });

  it("gives the oldest entry still there, whichever were removed: first in, first out", () => {
    const list = new UnderWay<{ name: string }>();
    expect(list.oldest).toBeUndefined();
    const [a, b, c, d] = ["a", "b", "c", "d"].map((name) => list.add({ name })) as [
      UnderWayEntry<{ name: string }>,
      UnderWayEntry<{ name: string }>,
      UnderWayEntry<{ name: string }>,
      UnderWayEntry<{ name: string }>,
    ];
    expect(list.oldest?.value?.name).toBe("a");
    list.remove(b);
    expect(list.oldest?.value?.name).toBe("a");
    list.remove(a);
    expect(list.oldest?.value?.name).toBe("c");
    list.remove(d);
    expect(list.oldest?.value?.name).toBe("c");
    list.remove(c);
    expect(list.oldest).toBeUndefined();
    list.add({ name: "e" });
    expect(list.oldest?.value?.name).toBe("e");
  });

  it("keeps nothing of a removed value: the entry no longer points at it or at its neighbours", () => {
    const list = new UnderWay<object>();
    list.add({});
    const middle = list.add({});
    list.add({});
    list.remove(middle);
    expect(middle).toEqual({ value: undefined, previous: undefined, next: undefined });
  });
});
