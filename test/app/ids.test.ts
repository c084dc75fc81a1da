// Ids are the only secret a Connection's id carries: each must be fresh random bits, including
// across the refills of the entropy that newId draws from.

import { describe, expect, it } from "vitest";
import { isConnectionId, newId } from "../../src/app/ids.js";

describe("newId", () => {
  it("makes distinct 128-bit URL-safe ids, across many refills of its entropy", () => {
    const ids = Array.from({ length: 5_000 }, () => newId("cxn"));
    expect(new Set(ids).size).toBe(ids.length);
    for (const id of ids) {
      expect(id).toMatch(/^cxn_[A-Za-z0-9_-]{22}$/);
      expect(Buffer.from(id.slice(4), "base64url")).toHaveLength(16);
      expect(isConnectionId(id)).toBe(true);
    }
  });

  it("spreads its bits: every base64url character appears in the first position", () => {
    const first = new Set(Array.from({ length: 5_000 }, () => newId("evt").charAt(4)));
    expect(first.size).toBe(64);
  });
});
