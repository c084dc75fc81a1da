// limitHeapGrowth must change what V8 does, set at run time as main.ts sets it: a process that keeps
// a live set and promotes garbage runs more, smaller full collections with the limit than without.
// Each figure comes from a process of its own, since the flag holds for the whole process.

import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const MODULE = new URL("../../src/runtime/heap-growth.ts", import.meta.url).pathname;
const ROOT = new URL("../..", import.meta.url).pathname;

/** A program that prints how many full collections it ran with limitHeapGrowth(its argument). */
const PROGRAM = `
import { constants, PerformanceObserver } from "node:perf_hooks";
import { limitHeapGrowth } from ${JSON.stringify(MODULE)};
limitHeapGrowth(Number(process.argv[2]));
let full = 0;
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) if (entry.detail.kind === constants.NODE_PERFORMANCE_GC_MAJOR) full++;
}).observe({ entryTypes: ["gc"] });
const live = Array.from({ length: 200_000 }, (_, index) => ({ index, text: "live " + index }));
// Each object outlives a few scavenges, so it is promoted and only a full collection frees it.
const ring = new Array(400_000);
for (let index = 0; index < 6_000_000; index++) ring[index % ring.length] = { index, text: "ring " + index };
setTimeout(() => console.log(JSON.stringify({ full, kept: live.length + ring.length })), 50);
`;

async function fullCollections(program: string, percent: number): Promise<number> {
  const { stdout } = await promisify(execFile)(process.execPath, ["--import", "tsx", program, String(percent)], {
    cwd: ROOT,
  });
  return (JSON.parse(stdout) as { full: number }).full;
}

describe("limitHeapGrowth", () => {
  let dir: string;
  let program: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "heap-growth-"));
    program = join(dir, "program.mts");
    writeFileSync(program, PROGRAM);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("makes V8 collect the old generation more often than it chooses to itself", async () => {
    const [unlimited, limited] = await Promise.all([fullCollections(program, 0), fullCollections(program, 50)]);
    expect(unlimited).toBeGreaterThan(0);
    expect(limited).toBeGreaterThanOrEqual(1.5 * unlimited);
  }, 60_000);
});
