// Ids are the only secret a Connection's id carries: each must hold fresh random bits, including
// across the refills of the entropy that newId draws from. The time before them makes ids sort by
// when they were made, so that new rows' index entries sit together.

import { describe, expect, it } from "vitest";
import { isConnectionId, newId } from "../../src/app/ids.js";

const TIME_DIGITS = 8;
const randomPart = (id: string) => id.slice(4 + TIME_DIGITS);

describe("newId", () => {
  it("makes distinct URL-safe ids of the time and 128 random bits, across many refills of its entropy", () => {
    const ids = Array.from({ length: 5_000 }, () => newId("cxn"));
    expect(new Set(ids).size).toBe(ids.length);
    for (const id of ids) {
      expect(id).toMatch(/^cxn_[A-Za-z0-9_-]{30}$/);
      expect(Buffer.from(randomPart(id), "base64url")).toHaveLength(16);
      expect(isConnectionId(id)).toBe(true);
    }
    expect(new Set(ids.map(randomPart)).size).toBe(ids.length);
  });

  it("spreads its random bits: every base64url character appears first in the random part", () => {
    const first = new Set(Array.from({ length: 5_000 }, () => randomPart(newId("evt")).charAt(0)));
    expect(first.size).toBe(64);
  });

  it("sorts ids by the millisecond they were made in, as text and as bytes, across every digit's carry", () => {
    const times = [
      0,
      1,
      63,
      64,
      65,
      4_095,
      4_096,
      64 ** 3 - 1,
      64 ** 3,
      Date.parse("2026-12-06T12:00:00Z"),
      2 ** 48 - 1,
    ];
    for (const [earlier, later] of times.slice(1).map((time, index) => [times[index] as number, time])) {
      for (let attempt = 0; attempt < 20; attempt++) {
        const [a, b] = [newId("cxn", earlier as number), newId("cxn", later as number)];
        expect(a < b).toBe(true);
        expect(Buffer.compare(Buffer.from(a), Buffer.from(b))).toBe(-1);
      }
    }
    const now = Date.now();
    expect(newId("org", now).slice(0, 4 + TIME_DIGITS)).toBe(newId("org", now).slice(0, 4 + TIME_DIGITS));
  });
});
