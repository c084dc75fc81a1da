// The CheckConnection cache's memory per entry: fills a CachingCheckReader with 100,000 Connections
// shaped like the bench's data set (27,001 organizations, fresh strings as a database read makes
// them) and reports the heap it holds, next to the same records kept as ConnectionRecords (what the
// cache kept before it stored entries compact). Run: npm run bench:cache
//   (node --expose-gc --import tsx bench/check-cache-footprint.ts [before|now]; each in its own process)

import { CachingCheckReader, type CheckSource } from "../src/store/check-reader.js";
import type { ConnectionRecord } from "../src/store/store.js";

const ENTRIES = Number(process.env.ENTRIES ?? 100_000);
const ORGANIZATIONS = 27_001;
const STATES = ["ACTIVE", "PENDING", "INACTIVE"] as const;
const SCOPE_SETS = [["account.read"], ["account.read", "transaction.read"], ["inquiry.read", "verification.read"]];

/** Every entry comes from a write: nothing is read. */
const NO_ROWS: CheckSource = {
  idle: () => true,
  one: () => undefined,
  many: () => [],
  whenIdle: async (read) => read(),
};

const gc = (globalThis as { gc?: () => void }).gc;
if (gc === undefined) throw new Error("run with node --expose-gc");

function heapAfterGc(): number {
  for (let i = 0; i < 3; i++) gc?.();
  return process.memoryUsage().heapUsed;
}

/** A record as the store's row conversion makes it: every string and array fresh from JSON. */
function record(index: number): ConnectionRecord {
  const now = Date.UTC(2026, 10, 28) + index;
  const row = JSON.stringify({
    id: `cxn_${index.toString(36).padStart(8, "0")}${"k3j5h6g7f8d9s0a1".slice(0, 18)}`,
    source: `org_${(index % ORGANIZATIONS).toString().padStart(6, "0")}`,
    destination: `org_${((index * 7 + 1) % ORGANIZATIONS).toString().padStart(6, "0")}`,
    name: `Connection ${index}`,
    scopes: JSON.stringify(SCOPE_SETS[index % SCOPE_SETS.length]),
    state: STATES[index % STATES.length],
    creator: `user:usr_${index % 5000}`,
  });
  const r = JSON.parse(row) as Record<string, string>;
  return {
    id: r.id as string,
    sourceOrganizationId: r.source as string,
    destinationOrganizationId: r.destination as string,
    name: r.name as string,
    scopes: JSON.parse(r.scopes as string) as string[],
    state: r.state as ConnectionRecord["state"],
    createTime: new Date(now),
    updateTime: new Date(now + 1000),
    activateTime: r.state === "ACTIVE" ? new Date(now + 500) : undefined,
    deactivateTime: r.state === "INACTIVE" ? new Date(now + 900) : undefined,
    creator: r.creator as string,
    createRequestId: "",
    version: 2,
  };
}

/** Heap held (after GC) and resident memory grown, per entry, while `fill` builds its structure. */
function measure(fill: () => unknown): { heap: number; rss: number } {
  const heapBefore = heapAfterGc();
  const rssBefore = process.memoryUsage().rss;
  const kept = fill();
  const rss = (process.memoryUsage().rss - rssBefore) / ENTRIES;
  const heap = (heapAfterGc() - heapBefore) / ENTRIES;
  // Keep the structure alive until measured.
  if (kept === undefined) throw new Error("nothing kept");
  return { heap, rss };
}

// One structure per process, so that resident memory is not shared between the two.
const mode = process.argv[2] ?? "both";
const results: [string, { heap: number; rss: number }][] = [];
if (mode === "before" || mode === "both") {
  results.push([
    "ConnectionRecord objects (the cache before)",
    measure(() => {
      const map = new Map<string, ConnectionRecord>();
      for (let i = 0; i < ENTRIES; i++) {
        const r = record(i);
        map.set(r.id, r);
      }
      return map;
    }),
  ]);
}
if (mode === "now" || mode === "both") {
  results.push([
    "compact entries (the cache now)",
    measure(() => {
      const reader = new CachingCheckReader(NO_ROWS, ENTRIES);
      for (let i = 0; i < ENTRIES; i++) reader.written(record(i));
      return reader;
    }),
  ]);
}

const mib = (bytesPerEntry: number) => ((bytesPerEntry * 100_000) / 2 ** 20).toFixed(1);
console.log(`${ENTRIES} entries, Node ${process.version}`);
for (const [name, { heap, rss }] of results) {
  console.log(
    `  ${name}: heap ${heap.toFixed(0)} B/entry (${mib(heap)} MiB per 100k), RSS +${rss.toFixed(0)} B/entry (${mib(rss)} MiB per 100k)`,
  );
}
