// The benchmark's report: the tables on stdout (progress goes to stderr), the formatting of
// figures, the ratios of same-round runs judged against config.ts's GOALS, and the list of failed
// requests and wrong answers that makes a run exit 1. Sections print their own tables with `table`.

import { readdirSync, statSync } from "node:fs";
import { cpus } from "node:os";
import { join } from "node:path";
import type { BatchRuns, ClientRunFigures, Headline, HeadlineRun, ServiceExtras } from "./clients.js";
import { config, GOALS, type Goal, NOISY_REST_PERCENT } from "./config.js";
import { summariseProfile } from "./profile.js";
import type { SeedReport } from "./seed.js";
import type { CpuFigures, Target } from "./servers.js";
import type { LoadResult } from "./workload.js";

export const log = (line = "") => process.stdout.write(`${line}\n`);
export const progress = (line: string) => process.stderr.write(`${line}\n`);

export function table(headers: readonly string[], rows: readonly (readonly string[])[]): void {
  const widths = headers.map((header, column) =>
    Math.max(header.length, ...rows.map((row) => (row[column] ?? "").length)),
  );
  const line = (cells: readonly string[]) =>
    cells
      .map((cell, column) => (column === 0 ? cell.padEnd(widths[column] ?? 0) : cell.padStart(widths[column] ?? 0)))
      .join("  ");
  log(line(headers));
  log(widths.map((width) => "-".repeat(width)).join("  "));
  for (const row of rows) log(line(row));
}

export const count = (value: number) => Math.round(value).toLocaleString("en-US");
export const ms = (value: number) => value.toFixed(2);
export const ratio = (value: number) => `${value.toFixed(2)}x`;
export const percent = (value: number) => `${value.toFixed(0)}%`;

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return Number.NaN;
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1
    ? (sorted[middle] as number)
    : ((sorted[middle - 1] as number) + (sorted[middle] as number)) / 2;
}

/** Per round, a's figure over b's; their median and range. */
export function roundRatios<R extends { readonly round: number }>(
  a: readonly R[] | undefined,
  b: readonly R[] | undefined,
  figure: (run: R) => number,
): { median: number; low: number; high: number } | undefined {
  if (a === undefined || b === undefined || a.length === 0) return undefined;
  const ratios = a.flatMap((run) => {
    const other = b.find((candidate) => candidate.round === run.round);
    return other === undefined ? [] : [figure(run) / figure(other)];
  });
  if (ratios.length === 0) return undefined;
  return { median: median(ratios), low: Math.min(...ratios), high: Math.max(...ratios) };
}

/** One line of the "Goals" list: the measured ratio, the goal, and whether it was met. */
export function verdict(label: string, value: number | undefined, goal: Goal): string {
  if (value === undefined) return `${label}: not measured`;
  const [met, bound] =
    "atMost" in goal ? [value <= goal.atMost, `<= ${goal.atMost}`] : [value >= goal.atLeast, `>= ${goal.atLeast}`];
  return `${label} ${ratio(value)} (goal ${bound}x): ${met ? "met" : "MISSED"}`;
}

export function printHeadline(targets: readonly Target[], headline: Headline): string[] {
  const verdicts: string[] = [];
  log();
  log(
    `CheckConnection over gRPC by h2load -t${config.h2loadThreads} -c${config.h2loadClients} -m${config.h2loadStreams}: ` +
      `one request body per service (an allowed check of connection ${headline.connectionId}), a ${config.h2loadWarmupSeconds} s warm-up run ` +
      `per server, then ${config.h2loadSeconds} s per run, ${config.rounds} alternating rounds; figures are the median over rounds, ` +
      "ratios the median (and range) of same-round ratios. 'CPU us/req' is the server's CPU time per answer: " +
      "unlike req/s it hardly depends on what else the machine is doing, and on a machine with a core to spare " +
      "per server, req/s ratios follow its inverse",
  );
  const runsOf = (name: string) => headline.runs.get(name);
  const rate = (run: HeadlineRun) => run.result.requestsPerSecond;
  const p99 = (run: HeadlineRun) => run.result.p99Ms;
  /** Server CPU per answer: what each server spends, however busy the machine was. */
  const cost = (run: HeadlineRun) => (run.cpu.serverSeconds / run.result.done) * 1e6;
  const comparing = headline.runs.has("compare");
  const rows = targets.map((target) => {
    const runs = runsOf(target.name) ?? [];
    const pick = (figure: (run: HeadlineRun) => number) => median(runs.map(figure));
    const vsGrpcJs = roundRatios(runs, runsOf("grpc-js"), rate);
    const vsCeiling = roundRatios(runs, runsOf("ceiling"), rate);
    const range = (value: ReturnType<typeof roundRatios>) =>
      value === undefined ? "" : `${ratio(value.median)} (${value.low.toFixed(2)}-${value.high.toFixed(2)})`;
    return [
      target.label,
      runs.map((run) => count(rate(run))).join(" / "),
      count(pick(rate)),
      ms(pick((run) => run.result.meanMs)),
      ms(pick((run) => run.result.sdMs)),
      ms(pick((run) => run.result.p50Ms)),
      ms(pick((run) => run.result.p90Ms)),
      ms(pick(p99)),
      ms(pick((run) => run.result.maxMs)),
      range(vsGrpcJs),
      range(vsCeiling),
      count(pick(cost)),
      range(roundRatios(runsOf("grpc-js"), runs, cost)),
      ...(comparing
        ? [range(roundRatios(runs, runsOf("compare"), rate)), range(roundRatios(runsOf("compare"), runs, cost))]
        : []),
    ];
  });
  table(
    [
      "server",
      "req/s by round",
      "req/s",
      "mean ms",
      "sd ms",
      "p50 ms",
      "p90 ms",
      "p99 ms",
      "max ms",
      "vs grpc-js",
      "vs ceiling",
      "CPU us/req",
      "grpc-js CPU/req over this",
      ...(comparing ? ["vs BENCH_COMPARE_ROOT", "its CPU/req over this"] : []),
    ],
    rows,
  );
  const sqlite = runsOf("sqlite");
  const postgres = runsOf("postgres");
  verdicts.push(
    verdict(
      "SQLite vs grpc-js (h2load, one id)",
      roundRatios(sqlite, runsOf("grpc-js"), rate)?.median,
      GOALS.sqliteVsGrpcJs,
    ),
  );
  verdicts.push(
    verdict(
      "SQLite vs node:http2 ceiling",
      roundRatios(sqlite, runsOf("ceiling"), rate)?.median,
      GOALS.sqliteVsCeiling,
    ),
  );
  verdicts.push(
    verdict("SQLite p99 vs grpc-js p99", roundRatios(sqlite, runsOf("grpc-js"), p99)?.median, GOALS.p99VsGrpcJs),
  );
  if (postgres !== undefined) {
    verdicts.push(
      verdict(
        "PostgreSQL vs grpc-js (h2load, one id)",
        roundRatios(postgres, runsOf("grpc-js"), rate)?.median,
        GOALS.postgresVsGrpcJs,
      ),
    );
  }
  log(
    `  (answer bytes per request: ${[...headline.answerBytes].map(([name, bytes]) => `${name} ${bytes}`).join(", ")}; ` +
      "every h2load run was checked to have received exactly that many DATA bytes per request)",
  );
  return verdicts;
}

export function printDistinct(targets: readonly Target[], runs: Map<string, ClientRunFigures[]>): string[] {
  log();
  log(
    `CheckConnection over gRPC by the project's client (node:http2, ${config.concurrency} in flight on ${config.sessions} ` +
      `connections, ${config.warmupSeconds} s warm-up and one pass over the pool, ${config.seconds} s measured, ` +
      `${config.clientRounds} alternating rounds): a pool of ${count(config.checkPool)} requests over random seeded ` +
      "connections (80% allowed; denied: wrong organization 7%, not active 8%, scope not granted 5%), every answer's reason checked",
  );
  const withRound = (name: string) => runs.get(name)?.map((run, round) => ({ ...run, round }));
  const rate = (run: ClientRunFigures) => run.result.requestsPerSecond;
  table(
    ["server", "req/s by round", "req/s", "p50 ms", "p90 ms", "p99 ms", "vs grpc-js", "client CPU"],
    targets
      .filter((target) => runs.has(target.name))
      .map((target) => {
        const list = runs.get(target.name) ?? [];
        const vs = roundRatios(withRound(target.name), withRound("grpc-js"), rate);
        return [
          target.label,
          list.map((run) => count(rate(run))).join(" / "),
          count(median(list.map(rate))),
          ms(median(list.map((run) => run.result.latency.p50Ms))),
          ms(median(list.map((run) => run.result.latency.p90Ms))),
          ms(median(list.map((run) => run.result.latency.p99Ms))),
          vs === undefined ? "" : `${ratio(vs.median)} (${vs.low.toFixed(2)}-${vs.high.toFixed(2)})`,
          percent(median(list.map((run) => run.result.clientCpuPercent))),
        ];
      }),
  );
  return [
    verdict(
      `SQLite vs grpc-js, ${count(config.checkPool)} distinct requests (own client)`,
      roundRatios(withRound("sqlite"), withRound("grpc-js"), rate)?.median,
      GOALS.distinctIdsVsGrpcJs,
    ),
  ];
}

export function printBatches(
  targets: readonly Target[],
  single: Map<string, ClientRunFigures[]>,
  batches: Map<string, BatchRuns>,
): string[] {
  const services = targets.filter((target) => batches.has(target.name));
  if (services.length === 0) return [];
  log();
  log(
    `BatchCheckConnection by the project's client: the same pool in batches of ${config.batchSize}, same connections ` +
      "and calls in flight, rounds alternating with the other services; checks per second against the single " +
      "CheckConnection runs above (ratios of medians), and per server CPU-second, which still compares when " +
      "other work shares the machine",
  );
  const checksPerSecond = (run: ClientRunFigures) => run.result.requestsPerSecond * config.batchSize;
  const perCpuSecond = (perSecond: number, run: ClientRunFigures) => perSecond / Math.max(run.cpu.server / 100, 0.01);
  const verdicts: string[] = [];
  table(
    [
      "server",
      "checks/s by round",
      "checks/s",
      "calls/s",
      "p50 ms",
      "p99 ms",
      "single checks/s",
      "vs single",
      "per CPU-s",
    ],
    services.map((target) => {
      const runs = batches.get(target.name)?.runs ?? [];
      const singles = single.get(target.name) ?? [];
      const batched = median(runs.map(checksPerSecond));
      const alone = median(singles.map((run) => run.result.requestsPerSecond));
      const cpuRatio =
        median(runs.map((run) => perCpuSecond(checksPerSecond(run), run))) /
        median(singles.map((run) => perCpuSecond(run.result.requestsPerSecond, run)));
      verdicts.push(
        verdict(`${target.label}: BatchCheckConnection checks/s vs single`, batched / alone, GOALS.batchVsSingle),
      );
      return [
        target.label,
        runs.map((run) => count(checksPerSecond(run))).join(" / "),
        count(batched),
        count(median(runs.map((run) => run.result.requestsPerSecond))),
        ms(median(runs.map((run) => run.result.latency.p50Ms))),
        ms(median(runs.map((run) => run.result.latency.p99Ms))),
        count(alone),
        ratio(batched / alone),
        ratio(cpuRatio),
      ];
    }),
  );
  return verdicts;
}

export function printExtras(targets: readonly Target[], extras: Map<string, ServiceExtras>): void {
  const services = targets.filter((target) => extras.has(target.name));
  if (services.length === 0) return;
  const of = (target: Target) => extras.get(target.name) as ServiceExtras;
  log();
  log("CreateConnection over gRPC (unique ordered pairs, api-gateway, x-organization-id = source, with request_id)");
  table(
    ["server", "req/s", "p50 ms", "p99 ms", "note"],
    services.map((target) => {
      const result = of(target).create.result;
      return [
        target.label,
        count(result.requestsPerSecond),
        ms(result.latency.p50Ms),
        ms(result.latency.p99Ms),
        result.exhausted ? `pool ran out after ${result.seconds.toFixed(1)} s` : "",
      ];
    }),
  );
  log();
  log(`ListConnections of the big organization (both directions, page_size ${config.pageSize}, one request at a time)`);
  table(
    [
      "server",
      "rows",
      "pages",
      "walk s",
      "first p50",
      "first p99",
      "deep page",
      "deep p50",
      "deep p99",
      "deep/first p50",
    ],
    services.map((target) => {
      const result = of(target).list;
      return [
        target.label,
        count(result.rows),
        count(result.pages),
        result.walkSeconds.toFixed(1),
        ms(result.first.p50Ms),
        ms(result.first.p99Ms),
        `#${result.deepPage}`,
        ms(result.deep.p50Ms),
        ms(result.deep.p99Ms),
        ratio(result.deep.p50Ms / result.first.p50Ms),
      ];
    }),
  );
  log(`  (latencies in ms; first and deep page each fetched ${config.listRepeats} times after the walk)`);
  log();
  log("Seeding through the store (openStore, createConnection, saveTransition)");
  table(
    ["server", "organizations", "connections", "transitions", "seconds", "connections/s"],
    services.map((target) => {
      const report = target.service?.seed as SeedReport;
      return [
        target.label,
        count(report.organizationCount),
        count(report.dataset.connections.length),
        count(report.transitions),
        report.seconds.toFixed(1),
        count(report.dataset.connections.length / report.seconds),
      ];
    }),
  );
}

export function printCpu(
  targets: readonly Target[],
  headline: Headline | undefined,
  distinct: Map<string, ClientRunFigures[]>,
  batches: Map<string, BatchRuns>,
) {
  log();
  log(
    `CPU over the measured windows (median), in % of one core (the machine has ${cpus().length * 100}%); ` +
      "'rest' is everything else running on the machine (other work makes figures noisy)",
  );
  const rows: string[][] = [];
  for (const target of targets) {
    const add = (name: string, figures: readonly CpuFigures[]) => {
      if (figures.length === 0) return;
      const server = median(figures.map((cpu) => cpu.server));
      const database = figures[0]?.database === undefined ? undefined : median(figures.map((cpu) => cpu.database ?? 0));
      const client = median(figures.map((cpu) => cpu.client));
      const machine = median(figures.map((cpu) => cpu.machine));
      rows.push([
        `${target.label}, ${name}`,
        percent(server),
        database === undefined ? "" : percent(database),
        percent(client),
        percent(Math.max(0, machine - server - (database ?? 0) - client)),
        percent(machine),
      ]);
    };
    add("h2load", headline?.runs.get(target.name)?.map((run) => run.cpu) ?? []);
    add("own client", distinct.get(target.name)?.map((run) => run.cpu) ?? []);
    add("own client, batches", batches.get(target.name)?.runs.map((run) => run.cpu) ?? []);
  }
  table(["run", "server", "PostgreSQL", "client", "rest", "machine"], rows);
}

/** Every failed request and wrong answer of the run, as lines; empty when there were none. */
export function problems(
  headline: Headline | undefined,
  distinct: Map<string, ClientRunFigures[]>,
  batches: Map<string, BatchRuns>,
  extras: Map<string, ServiceExtras>,
): string[] {
  const lines: string[] = [];
  for (const [name, runs] of headline?.runs ?? []) {
    const expected = headline?.answerBytes.get(name);
    for (const { result, round } of runs) {
      const at = `h2load ${name} round ${round + 1}`;
      // Streams still open when the time is up count as failed: at most one per stream slot.
      const inFlight = config.h2loadClients * config.h2loadStreams;
      if (result.failed > inFlight) lines.push(`${at}: ${result.failed} requests failed`);
      if (result.non2xx > 0) lines.push(`${at}: ${result.non2xx} answers with an HTTP status other than 2xx`);
      if (expected !== undefined && Math.abs(result.dataBytesPerAnswer - expected) > 0.001) {
        lines.push(
          `${at}: ${result.dataBytesPerAnswer.toFixed(2)} DATA bytes per answer, expected ${expected} ` +
            "(some answers were not the allowed check)",
        );
      }
    }
  }
  const loadProblems = (label: string, result: LoadResult) => {
    for (const [error, times] of Object.entries(result.errors)) lines.push(`${label}: ${times} x ${error}`);
    if (result.wrongAnswers > 0) {
      lines.push(`${label}: ${result.wrongAnswers} wrong answers, e.g. ${result.wrongAnswerExamples.join("; ")}`);
    }
  };
  for (const [name, runs] of distinct) for (const run of runs) loadProblems(`${name} CheckConnection`, run.result);
  for (const [name, batch] of batches) {
    for (const run of batch.runs) loadProblems(`${name} BatchCheckConnection`, run.result);
    if (batch.failures > 0) lines.push(`${name} BatchCheckConnection: ${batch.failures} calls failed while verified`);
    if (batch.wrong > 0) {
      lines.push(`${name} BatchCheckConnection: ${batch.wrong} wrong answers, e.g. ${batch.examples.join("; ")}`);
    }
  }
  for (const [name, extra] of extras) {
    loadProblems(`${name} CreateConnection`, extra.create.result);
    for (const [error, times] of Object.entries(extra.list.errors)) {
      lines.push(`${name} ListConnections: ${times} x ${error}`);
    }
  }
  return lines;
}

export function profileOf(target: Target, windows: readonly (readonly [number, number])[]): string[] {
  const dir = target.service?.profileDir;
  if (dir === undefined) return [];
  // CPU.<date>.<time>.<pid>.<thread>.<seq>.cpuprofile: thread 0 is the main thread (1 is tsx's loader).
  const file = readdirSync(dir)
    .filter((entry) => entry.endsWith(".cpuprofile") && entry.split(".")[4] === "0")
    .map((entry) => join(dir, entry))
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)[0];
  return file === undefined ? ["(no profile written)"] : [`profile: ${file}`, ...summariseProfile(file, windows)];
}

/** Peak resident memory of each server, taken before it stopped, and each service's log volume. */
export function printMemory(targets: readonly Target[], peakRss: readonly (readonly [string, number])[]): void {
  log();
  log("Peak resident memory (VmHWM) of each server process, and the service's log volume");
  table(
    ["server", "peak RSS MiB", "log"],
    peakRss.map(([label, mib]) => {
      const target = targets.find((candidate) => candidate.label === label);
      const logPath = target?.service?.logPath;
      return [
        label,
        mib.toFixed(0),
        logPath === undefined ? "" : `${(statSync(logPath).size / 2 ** 20).toFixed(1)} MiB`,
      ];
    }),
  );
}

/** With BENCH_CPU_PROF_DIR: each service's CPU profile summarised over its measured windows. */
export function printProfiles(
  targets: readonly Target[],
  headline: Headline | undefined,
  distinct: Map<string, ClientRunFigures[]>,
): void {
  for (const target of targets) {
    const measured = [
      ["h2load runs", headline?.runs.get(target.name)?.map((run) => run.windowUs)],
      ["distinct-id runs", distinct.get(target.name)?.map((run) => run.windowUs)],
    ] as const;
    for (const [runs, windows] of measured) {
      if (windows === undefined || windows.length === 0) continue;
      const lines = profileOf(target, windows);
      if (lines.length === 0) continue;
      log();
      log(`CPU profile of the ${target.label} service over its ${runs}`);
      for (const line of lines) log(`  ${line}`);
    }
  }
}

/** The goals' verdicts, and a warning when other work on the machine made the windows noisy. */
export function printGoals(verdicts: readonly string[], windows: readonly CpuFigures[]): void {
  log();
  log("Goals");
  for (const line of verdicts) log(`  ${line}`);
  const noisy = windows.filter(
    (cpu) => cpu.machine - cpu.server - (cpu.database ?? 0) - cpu.client > NOISY_REST_PERCENT,
  );
  if (noisy.length > 0) {
    log(
      `WARNING: in ${noisy.length} runs other processes used more than ${NOISY_REST_PERCENT}% of a core: ` +
        "the machine was busy with other work; ratios are less trustworthy, run again",
    );
  }
}
