// What a check that misses the cache costs inside the process, apart from the RPC around it: CPU
// per id of BatchCheckConnection-sized reads (50 ids) through the store's check reader, of ids its
// cache holds and of ids it does not, on a file built by scale-dataset.ts, with SQLite reading the
// file through its memory map and with read(). The data is five times the cache and far larger
// than SQLite's page cache, as in the scale section.
// Run: npx tsx bench/check-source.ts FILE [CONNECTIONS]  (builds FILE first when it is missing;
// CONNECTIONS defaults to 1,000,000; the cache holds a fifth)

import { existsSync } from "node:fs";
import { loadavg } from "node:os";
import { openStore } from "../src/store/open.js";
import { buildScaleDatabase, scaleConnectionId } from "./scale-dataset.js";

const BATCH = 50;
const BATCHES = 4_000;
const ROUNDS = 3;

const [path, count] = process.argv.slice(2);
if (path === undefined) throw new Error("usage: check-source.ts FILE [CONNECTIONS]");
const connections = Number(count ?? 1_000_000);
if (!existsSync(path)) {
  process.stdout.write(`building ${connections} Connections in ${path}\n`);
  await buildScaleDatabase(path, { connections, organizations: Math.ceil(connections / 50) });
}
const capacity = Math.floor(connections / 5);

let seed = 20_260_101;
/** xorshift32: the same ids every run. */
function randomIndex(below: number): number {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return Math.floor(((seed >>> 0) / 2 ** 32) * below);
}
const batches = (from: number, to: number) =>
  Array.from({ length: BATCHES }, () =>
    Array.from({ length: BATCH }, () => scaleConnectionId(from + randomIndex(to - from))),
  );
const cpuMicros = () => {
  const { user, system } = process.cpuUsage();
  return user + system;
};

/** µs of CPU per id over `batches`, each read with `read`. */
async function perId(batchesOfIds: string[][], read: (ids: string[]) => unknown): Promise<number> {
  const began = cpuMicros();
  for (const ids of batchesOfIds) await read(ids);
  return (cpuMicros() - began) / (batchesOfIds.length * BATCH);
}

async function measure(sqliteMmapMib: number): Promise<string[]> {
  const store = await openStore({ databaseUrl: `sqlite:${path}`, checkCacheEntries: capacity, sqliteMmapMib });
  try {
    // Cached: the first `capacity` ids, read once; missing: ids past them, mostly not seen before.
    for (let index = 0; index < capacity; index += 100) {
      await store.getConnectionsForCheck(Array.from({ length: 100 }, (_, offset) => scaleConnectionId(index + offset)));
    }
    const lines: string[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const cached = await perId(batches(0, capacity), (ids) => store.getConnectionsForCheck(ids));
      const missing = await perId(batches(capacity, connections), (ids) => store.getConnectionsForCheck(ids));
      lines.push(
        `cached ${cached.toFixed(2)} µs, missing ${missing.toFixed(2)} µs (${(missing / cached).toFixed(1)}x)`,
      );
    }
    return lines;
  } finally {
    await store.close();
  }
}

for (const [label, mib] of [
  ["memory map (SQLITE_MMAP_MIB default)", 2047],
  ["read() (SQLITE_MMAP_MIB=0)", 0],
] as const) {
  process.stdout.write(`${label}, CPU per id in batches of ${BATCH}, cache of ${capacity} of ${connections}:\n`);
  for (const line of await measure(mib)) process.stdout.write(`  ${line}\n`);
}
process.stdout.write(
  `load average ${loadavg()
    .map((value) => value.toFixed(2))
    .join(" ")}\n`,
);
