// Summarises a V8 .cpuprofile (node --cpu-prof) over the samples taken inside time windows (the
// h2load CheckConnection runs): self time by area (the innermost frame of a known library or of
// the service decides) and the hottest functions by self time.

import { readFileSync } from "node:fs";

interface ProfileNode {
  readonly id: number;
  readonly callFrame: {
    readonly functionName: string;
    readonly url: string;
    readonly lineNumber: number;
  };
  readonly children?: readonly number[];
}

interface CpuProfile {
  readonly nodes: readonly ProfileNode[];
  /** Microseconds, CLOCK_MONOTONIC (the clock of process.hrtime). */
  readonly startTime: number;
  readonly endTime: number;
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
}

/**
 * Tried on the sampled frame, then on its callers: the first frame that matches decides. Frames
 * without a URL (natives) and generic node internals (net, streams, events, fs, buffer, ...) are
 * passed over, so that, say, a write(2) of the logger counts as logging and one of pg as the driver.
 */
const AREAS: readonly (readonly [string, RegExp])[] = [
  ["logging (pino, sonic-boom)", /\/(pino|sonic-boom|pino-std-serializers|fast-safe-stringify)\//],
  ["metrics (prom-client)", /\/prom-client\//],
  [
    "database driver (kysely, better-sqlite3, pg)",
    /\/(kysely|better-sqlite3|pg|pg-protocol|pg-pool|pg-types|postgres-[a-z]+)\//,
  ],
  ["protobuf-es (encode, decode, create)", /\/@bufbuild\/protobuf\/|\/gen\//],
  ["service: store", /\/src\/store\//],
  ["service: transport", /\/src\/transport\//],
  ["service: api, app, domain", /\/src\//],
  ["node: http2", /^node:internal\/http2/],
  ["node: crypto (ids, hashes)", /^node:internal\/crypto/],
];

function areaOf(nodeId: number, nodes: Map<number, ProfileNode>, parents: Map<number, number>): string {
  const own = nodes.get(nodeId)?.callFrame.functionName ?? "";
  if (own === "(garbage collector)" || own === "(idle)" || own === "(program)") return own;
  for (let id: number | undefined = nodeId; id !== undefined; id = parents.get(id)) {
    const url = nodes.get(id)?.callFrame.url ?? "";
    if (url === "") continue;
    for (const [area, pattern] of AREAS) if (pattern.test(url)) return area;
    if (!url.startsWith("node:")) return "other";
  }
  return "node: other (net, streams, events, timers, ...)";
}

function shortUrl(url: string): string {
  return url
    .replace(/^file:\/\//, "")
    .replace(/^.*\/node_modules\//, "")
    .replace(/^.*\/(src|gen|bench)\//, "$1/");
}

function top(map: Map<string, number>, total: number, count: number): string[] {
  return [...map.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, count)
    .map(([name, samples]) => `${((samples / total) * 100).toFixed(1).padStart(5)}%  ${name}`);
}

/** Lines to print: self time by area, then the hottest functions. */
export function summariseProfile(path: string, windowsUs: readonly (readonly [number, number])[]): string[] {
  const profile = JSON.parse(readFileSync(path, "utf8")) as CpuProfile;
  const nodes = new Map(profile.nodes.map((node) => [node.id, node]));
  const parents = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parents.set(child, node.id);
  const inside = windowsUs.filter(([start, end]) => start >= profile.startTime && end <= profile.endTime);
  const windows = inside.length > 0 ? inside : undefined;
  const byFunction = new Map<string, number>();
  const byArea = new Map<string, number>();
  let total = 0;
  let time = profile.startTime;
  for (let index = 0; index < profile.samples.length; index++) {
    time += profile.timeDeltas[index] ?? 0;
    if (windows !== undefined && !windows.some(([start, end]) => time >= start && time <= end)) continue;
    const id = profile.samples[index] ?? -1;
    const node = nodes.get(id);
    if (node === undefined) continue;
    const { functionName, url, lineNumber } = node.callFrame;
    const name = `${functionName || "(anonymous)"}${url === "" ? "" : `  ${shortUrl(url)}:${lineNumber + 1}`}`;
    byFunction.set(name, (byFunction.get(name) ?? 0) + 1);
    const area = areaOf(id, nodes, parents);
    byArea.set(area, (byArea.get(area) ?? 0) + 1);
    total++;
  }
  if (total === 0) return ["(no samples)"];
  return [
    windows === undefined
      ? `${total} samples over the whole life of the process (no window matched the profile's clock)`
      : `${total} samples (about 1 ms each) inside the ${windows.length} measured windows`,
    "self time by area (a native frame counts for the library that called it):",
    ...top(byArea, total, 20).map((line) => `  ${line}`),
    "top functions by self time:",
    ...top(byFunction, total, 20).map((line) => `  ${line}`),
  ];
}
