// The scale section of `npm run bench`: the service on SQLite with several times more Connections
// than its check cache holds (BENCH_SCALE_FACTOR, 5 by default, times BENCH_SCALE_CACHE), in a
// file built by bench/scale-dataset.ts from one generated SQL script. It measures
// - start-up: from spawning the service to its health check answering SERVING, on an empty file,
//   on this one and on one of a million Connections (BENCH_SCALE_STARTUP_CONNECTIONS), with the
//   page cache dropped before each start when this process may (root), as wall time and as the
//   CPU time the service had used by then;
// - CheckConnection and BatchCheckConnection on ids the cache holds ("cached": a hot set of half
//   the cache, every id checked once beforehand) and on random ids over the whole data set
//   ("missing": the pool cycles through five times the cache, so an id is evicted before it comes
//   back), as checks per second and the service's CPU per check. Cached and missing alternate,
//   BENCH_SCALE_ROUNDS times each, and each round's miss / cached ratio is taken from its own pair:
//   this machine's speed drifts by a factor of two within a minute, which one cached run followed
//   by one missing run took for the cost of a miss;
// - the cache's cost per entry from outside: a second service whose cache holds every Connection,
//   its anonymous resident memory (RSS without the memory-mapped database file) and heap (scraped
//   from its /metrics) before and after every Connection was checked once.
// Goals (the issue's): a miss costs at most 1.5x a cached check in service CPU, one id and in
// batches; random-id BatchCheckConnection at least 5x the CheckConnection rate.

import { readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { BATCH_CHECK_PATH, batchCheckRequests, verifyBatches } from "./batch-check.js";
import { buildService, processCpuSeconds, runClient, startService, statusMiB } from "./processes.js";
import { median, roundRatios } from "./report.js";
import { buildScaleDatabase, type ScaleDatasetOptions, scaleDataset } from "./scale-dataset.js";
import { CHECK_PATH, checkRequests, type LoadPlan, type RequestItem } from "./workload.js";

export interface ScaleOptions {
  readonly workDir: string;
  readonly callersFile: string;
  /** The token service's headers (it may check). */
  readonly headers: Readonly<Record<string, string>>;
  readonly log: (line?: string) => void;
  readonly progress: (line: string) => void;
  readonly integer: (name: string, fallback: number) => number;
}

interface Run {
  readonly name: string;
  readonly kind: "cached" | "missing";
  readonly round: number;
  readonly checksPerCall: number;
  readonly checksPerSecond: number;
  readonly cpuUsPerCheck: number;
  readonly failures: number;
}

/** One kind of check the section measures, cached and missing. */
interface ScaleCheck {
  readonly name: string;
  readonly path: string;
  readonly cached: readonly RequestItem[];
  readonly missing: readonly RequestItem[];
  readonly checksPerCall: number;
}

const GOALS = { missVsCachedCpu: 1.5, batchVsSingle: 5 } as const;

/** Drops the file from the page cache (root only): start-up then reads it from the disk. */
function dropPageCache(): boolean {
  try {
    writeFileSync("/proc/sys/vm/drop_caches", "1");
    return true;
  } catch {
    return false;
  }
}

const mib = (bytes: number) => bytes / 2 ** 20;

/** Seconds `run` took. */
async function timed(run: () => Promise<void>): Promise<number> {
  const began = performance.now();
  await run();
  return (performance.now() - began) / 1000;
}

async function heapUsedBytes(adminPort: number): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  const match = /^nodejs_heap_size_used_bytes (\S+)$/m.exec(text);
  return match?.[1] === undefined ? Number.NaN : Number(match[1]);
}

export async function runScale(options: ScaleOptions): Promise<string[]> {
  const { workDir, log, progress, integer } = options;
  const cache = integer("BENCH_SCALE_CACHE", 40_000);
  const factor = integer("BENCH_SCALE_FACTOR", 5);
  const dataset: ScaleDatasetOptions = { connections: cache * factor, organizations: Math.ceil((cache * factor) / 50) };
  const startupConnections = integer("BENCH_SCALE_STARTUP_CONNECTIONS", 1_000_000);
  const starts = integer("BENCH_SCALE_STARTS", 3);
  const seconds = integer("BENCH_SCALE_SECONDS", 4);
  const rounds = integer("BENCH_SCALE_ROUNDS", 3);
  const warmupSeconds = integer("BENCH_SCALE_WARMUP_SECONDS", 2);
  const batchSize = integer("BENCH_BATCH_SIZE", 50);
  const path = join(workDir, "scale.db");
  const emptyPath = join(workDir, "scale-empty.db");
  const startupPath = join(workDir, "scale-startup.db");

  progress(`scale: building ${dataset.connections} Connections (generated SQL)`);
  const built = await timed(() => buildScaleDatabase(path, dataset));
  await buildScaleDatabase(emptyPath, { connections: 1, organizations: 2 });
  const startupFiles: [string, string][] = [
    ["empty file", emptyPath],
    [`${dataset.connections} Connections`, path],
  ];
  if (startupConnections > 0) {
    progress(`scale: building ${startupConnections} Connections for start-up (generated SQL)`);
    const organizations = Math.ceil(startupConnections / 50);
    const startupBuilt = await timed(() =>
      buildScaleDatabase(startupPath, { connections: startupConnections, organizations }),
    );
    progress(`  built in ${startupBuilt.toFixed(1)} s, ${mib(statSync(startupPath).size).toFixed(0)} MiB`);
    startupFiles.push([`${startupConnections} Connections`, startupPath]);
  }
  buildService();

  const start = (databasePath: string, env: Record<string, string>, logLevel = "warn", until?: "serving") =>
    startService({
      databaseUrl: `sqlite:${databasePath}`,
      logLevel,
      callersFile: options.callersFile,
      logPath: join(workDir, "scale-service.log"),
      cpuProfileDir: undefined,
      env,
      until,
    });

  // Start-up, each file in turn, the page cache dropped before each start (Node and the modules too).
  progress("scale: start-up to SERVING");
  const startups = new Map<string, string[]>(startupFiles.map(([label]) => [label, []]));
  let dropped = true;
  for (let round = 0; round < starts; round++) {
    for (const [label, databasePath] of startupFiles) {
      dropped = dropPageCache() && dropped;
      const started = await start(databasePath, { CHECK_CACHE_ENTRIES: String(cache) }, "warn", "serving");
      startups
        .get(label)
        ?.push(`${(started.readyMs / 1000).toFixed(2)} s (CPU ${started.readyCpuSeconds.toFixed(2)} s)`);
      await started.stop();
    }
  }

  // Checks: the cache holds `cache` Connections; the data set is `factor` times that.
  const service = await start(path, { CHECK_CACHE_ENTRIES: String(cache) });
  const url = `http://127.0.0.1:${service.port}`;
  const hotPool = checkRequests(scaleDataset(dataset, 0, cache / 2), cache, 1);
  const randomPool = checkRequests(scaleDataset(dataset), dataset.connections, 2);
  const hotBatches = batchCheckRequests(hotPool, batchSize);
  progress("scale: verifying every batch's answers (and caching the hot set)");
  const verified = [
    await verifyBatches(url, options.headers, hotBatches),
    await verifyBatches(url, options.headers, batchCheckRequests(randomPool, batchSize)),
  ];
  const runs: Run[] = [];
  const measure = async (round: number, check: ScaleCheck, kind: Run["kind"]) => {
    const { name, checksPerCall } = check;
    const planPath = join(workDir, `scale-plan-${runs.length}.json`);
    const plan: LoadPlan = {
      kind: "load",
      url,
      path: check.path,
      headers: options.headers,
      sessions: 8,
      concurrency: checksPerCall > 1 ? 32 : 128,
      warmupSeconds,
      seconds,
      requests: check[kind],
      reuse: true,
    };
    writeFileSync(planPath, JSON.stringify(plan));
    let cpuAtStart = 0;
    let cpuSeconds = 0;
    const { result } = await runClient<LoadPlan>(planPath, (edge) => {
      if (edge === "start") cpuAtStart = processCpuSeconds(service.pid);
      else cpuSeconds = processCpuSeconds(service.pid) - cpuAtStart;
    });
    const checks = result.completed * checksPerCall;
    const run: Run = {
      name,
      kind,
      round,
      checksPerCall,
      checksPerSecond: checks / result.seconds,
      cpuUsPerCheck: (cpuSeconds * 1e6) / checks,
      failures: Object.values(result.errors).reduce((sum, n) => sum + n, 0) + result.wrongAnswers,
    };
    progress(
      `  ${name}, ${kind}: ${Math.round(run.checksPerSecond)} checks/s, ${run.cpuUsPerCheck.toFixed(1)} µs service CPU per check`,
    );
    runs.push(run);
  };
  const bodies = (items: readonly RequestItem[]) => items.map(({ body }) => ({ body }));
  const kinds: [ScaleCheck, ScaleCheck] = [
    { name: "CheckConnection", path: CHECK_PATH, cached: hotPool, missing: randomPool, checksPerCall: 1 },
    {
      name: `BatchCheckConnection (${batchSize})`,
      path: BATCH_CHECK_PATH,
      cached: bodies(hotBatches),
      missing: bodies(batchCheckRequests(randomPool, batchSize)),
      checksPerCall: batchSize,
    },
  ];
  for (let round = 1; round <= rounds; round++) {
    progress(`scale: round ${round} of ${rounds}`);
    for (const check of kinds) {
      // The missing run before evicted part of the hot set: each cached run starts with all of it.
      await verifyBatches(url, options.headers, hotBatches);
      await measure(round, check, "cached");
      await measure(round, check, "missing");
    }
  }
  const checkingMemory = {
    peakRss: statusMiB(service.pid, "VmHWM"),
    rss: statusMiB(service.pid, "VmRSS"),
    anonymous: statusMiB(service.pid, "RssAnon"),
  };
  await service.stop();

  // The cache's cost per entry, from outside: the same checks of every Connection once, by a
  // service whose cache holds them all and by one whose cache holds one; the difference in what
  // they grew is the cache (SQLite's own page cache and everything else grow alike in both).
  progress("scale: the cache's memory per entry, every Connection checked once");
  const everyOnce = batchCheckRequests(checkRequests(scaleDataset(dataset), dataset.connections, 3), 100);
  const growth = async (checkCacheEntries: number) => {
    const filled = await start(path, { CHECK_CACHE_ENTRIES: String(checkCacheEntries) }, "info");
    const filledUrl = `http://127.0.0.1:${filled.port}`;
    const adminPort = await adminPortOf(filled.port, join(workDir, "scale-service.log"));
    await verifyBatches(filledUrl, options.headers, everyOnce.slice(0, 10));
    const rss = statusMiB(filled.pid, "RssAnon");
    const heap = adminPort === undefined ? Number.NaN : await heapUsedBytes(adminPort);
    const began = performance.now();
    await verifyBatches(filledUrl, options.headers, everyOnce);
    const fill = {
      seconds: (performance.now() - began) / 1000,
      rssMiB: statusMiB(filled.pid, "RssAnon") - rss,
      heapMiB: mib((adminPort === undefined ? Number.NaN : await heapUsedBytes(adminPort)) - heap),
    };
    await filled.stop();
    return fill;
  };
  const holdsAll = await growth(dataset.connections);
  const holdsOne = await growth(1);
  const entries = dataset.connections;
  const perEntry = (mibs: number) => ((mibs * 2 ** 20) / entries).toFixed(0);

  log();
  log(
    `Scale (SQLite): ${entries} Connections (${factor}x CHECK_CACHE_ENTRIES=${cache}), ${dataset.organizations} ` +
      `organizations, built in ${built.toFixed(1)} s from generated SQL`,
  );
  log(
    `  start-up, spawn to health SERVING${dropped ? ", page cache dropped before each start" : " (page cache NOT dropped: not root)"}:`,
  );
  for (const [label, times] of startups) log(`    ${label}: ${times.join(", ")}`);
  log(
    `  memory of the checking service: peak RSS ${checkingMemory.peakRss.toFixed(0)} MiB; at the end RSS ` +
      `${checkingMemory.rss.toFixed(0)} MiB, of which anonymous ${checkingMemory.anonymous.toFixed(0)} MiB (the rest ` +
      "is pages of the memory-mapped database file, which the kernel may reclaim)",
  );
  /** The runs named `name` of `kind`, in round order. */
  const runsOf = (name: string, kind: Run["kind"]) => runs.filter((run) => run.name === name && run.kind === kind);
  /** One figure of those runs. */
  const series = (name: string, kind: Run["kind"], figure: (run: Run) => number) => runsOf(name, kind).map(figure);
  const list = (values: readonly number[], digits: number) => values.map((value) => value.toFixed(digits)).join(", ");
  log(`  checks, median of ${rounds} rounds (each round's runs in brackets), cached and missing alternating:`);
  for (const { name } of kinds) {
    for (const kind of ["cached", "missing"] as const) {
      const perSecond = series(name, kind, (run) => run.checksPerSecond);
      const cpu = series(name, kind, (run) => run.cpuUsPerCheck);
      const failures = series(name, kind, (run) => run.failures).reduce((sum, n) => sum + n, 0);
      log(
        `    ${name}, ${kind}: ${Math.round(median(perSecond))} checks/s [${list(perSecond, 0)}], ` +
          `${median(cpu).toFixed(1)} µs service CPU per check [${list(cpu, 1)}]` +
          (failures > 0 ? `, ${failures} FAILED` : ""),
      );
    }
  }
  const wrong = verified.reduce((sum, v) => sum + v.wrong + v.failures, 0);
  log(`  answers verified: ${verified.reduce((sum, v) => sum + v.checks, 0)} checks, ${wrong} wrong or failed`);
  log(
    `  cache memory, every Connection checked once (${holdsAll.seconds.toFixed(1)} s): a cache that holds them all grew ` +
      `anonymous RSS ${holdsAll.rssMiB.toFixed(0)} MiB and heap used ${holdsAll.heapMiB.toFixed(0)} MiB, one that holds one ` +
      `${holdsOne.rssMiB.toFixed(0)} and ${holdsOne.heapMiB.toFixed(0)} MiB: ${perEntry(holdsAll.rssMiB - holdsOne.rssMiB)} B of anonymous RSS ` +
      `and ${perEntry(holdsAll.heapMiB - holdsOne.heapMiB)} B of heap per entry (heap as scraped from /metrics, garbage included)`,
  );
  const verdicts: string[] = [];
  for (const { name } of kinds) {
    const ratios = roundRatios(runsOf(name, "missing"), runsOf(name, "cached"), (run) => run.cpuUsPerCheck);
    const ratio = ratios?.median ?? Number.NaN;
    verdicts.push(
      `scale: ${name} miss / cached service CPU per check ${ratio.toFixed(2)}x, median of same-round ratios ` +
        `(${ratios?.low.toFixed(2)}-${ratios?.high.toFixed(2)}) (goal <= ${GOALS.missVsCachedCpu}x): ` +
        `${ratio <= GOALS.missVsCachedCpu ? "met" : "NOT MET"}`,
    );
  }
  const missingRate = (name: string) => median(series(name, "missing", (run) => run.checksPerSecond));
  const [single, batch] = kinds;
  const batchRatio = missingRate(batch.name) / missingRate(single.name);
  verdicts.push(
    `scale: random-id BatchCheckConnection / CheckConnection checks per second ${batchRatio.toFixed(1)}x (goal >= ${GOALS.batchVsSingle}x): ${batchRatio >= GOALS.batchVsSingle ? "met" : "NOT MET"}`,
  );
  if (wrong > 0 || runs.some((run) => run.failures > 0))
    verdicts.push("scale: FAILED: requests failed or answers were wrong");
  return verdicts;
}

/** The admin (metrics) port from the service's start-up log line, which may reach the file after the port opened. */
async function adminPortOf(port: number, logPath: string): Promise<number | undefined> {
  for (let attempt = 0; attempt < 100; attempt++) {
    for (const line of readFileSync(logPath, "utf8").split("\n")) {
      if (!line.includes(`"port":${port}`)) continue;
      const match = /"adminPort":(\d+)/.exec(line);
      if (match?.[1] !== undefined) return Number(match[1]);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return undefined;
}
