// The clients that measure the servers: h2load's headline (one CheckConnection body, alternating
// rounds over every server), and the project's own client (load-client.ts, one process per run) for
// distinct ids, BatchCheckConnection, CreateConnection and ListConnections deep pages. Each run's
// server CPU is taken over the measured window only.

import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { fromBinary } from "@bufbuild/protobuf";
import {
  CheckConnectionResponse_Reason,
  CheckConnectionResponseSchema,
} from "../gen/connections/v1/connection_service_pb.js";
import { BATCH_CHECK_PATH, batchCheckRequests, verifyBatches } from "./batch-check.js";
import { config } from "./config.js";
import { checkReason, Errors, failureOf, frame, openChannel } from "./grpc-client.js";
import { ensureH2load, type H2loadResult, runH2load } from "./h2load.js";
import { runClient, statusMiB } from "./processes.js";
import { count, progress } from "./report.js";
import type { Bench } from "./section.js";
import { type CpuFigures, cpuWindow, type Target } from "./servers.js";
import {
  CHECK_PATH,
  CREATE_PATH,
  createRequests,
  LIST_PATH,
  type ListPlan,
  type ListResult,
  type LoadPlan,
  type LoadResult,
  type RequestItem,
} from "./workload.js";

// ---------------------------------------------------------------------------------------------
// Headline: h2load, one CheckConnection body, alternating rounds

export interface HeadlineRun {
  readonly round: number;
  readonly result: H2loadResult;
  readonly cpu: CpuFigures;
  /** process.hrtime microseconds of the measured part (for the service's CPU profile). */
  readonly windowUs: readonly [number, number];
}

export interface Headline {
  /** The body every request carries, and what a correct answer looks like. */
  readonly connectionId: string;
  readonly runs: Map<string, HeadlineRun[]>;
  /** Expected bytes of DATA per answer, per target (its framed answer, found before the run). */
  readonly answerBytes: Map<string, number>;
}

const nowUs = () => Number(process.hrtime.bigint() / 1000n);

/** One call with `body`: the framed answer, or an error when it is not an OK CheckConnection allowing it. */
async function checkOnce(target: Target, headers: Record<string, string>, body: Buffer): Promise<Buffer> {
  const errors = new Errors();
  const channel = await openChannel({ url: target.url, path: CHECK_PATH, sessions: 1 }, errors);
  try {
    const answer = await new Promise<Parameters<typeof failureOf>[0]>((resolve) =>
      channel.call(0, headers, body, resolve),
    );
    const failure = failureOf(answer) ?? Object.keys(errors.counts)[0];
    if (failure !== undefined) throw new Error(`${target.label}: CheckConnection failed: ${failure}`);
    if (checkReason(answer.body) !== CheckConnectionResponse_Reason.ALLOWED) {
      const response = fromBinary(CheckConnectionResponseSchema, answer.body.subarray(5));
      throw new Error(`${target.label}: expected an allowed check, got reason ${response.reason}`);
    }
    return answer.body;
  } finally {
    channel.close();
  }
}

export async function runHeadline({ workDir, targets, credentials }: Bench): Promise<Headline> {
  const binary = ensureH2load(progress);
  // Per service, one allowed check: the first ACTIVE Connection of its pool, issued by its source.
  // The baselines answer anything; they get the first service's.
  const bodies = new Map<string, { path: string; connectionId: string }>();
  const answerBytes = new Map<string, number>();
  for (const target of targets) {
    const owner = target.service ?? targets.find((candidate) => candidate.service !== undefined)?.service;
    const item = owner?.checks.find((check) => check.expectReason === CheckConnectionResponse_Reason.ALLOWED);
    if (owner === undefined || item === undefined) throw new Error("the headline needs a service target");
    const body = frame(Buffer.from(item.body, "base64"));
    const path = join(workDir, `check-request-${target.name}.bin`);
    writeFileSync(path, body);
    const connectionId = owner.seed.dataset.connections.find((connection) => body.includes(connection.id))?.id ?? "?";
    bodies.set(target.name, { path, connectionId });
    answerBytes.set(target.name, (await checkOnce(target, credentials.tokenService, body)).length);
  }
  const connectionId = [...new Set([...bodies.values()].map((body) => body.connectionId))].join(", ");
  const h2load = (target: Target, seconds: number, logName: string) =>
    runH2load(binary, {
      url: target.url,
      bodyPath: bodies.get(target.name)?.path as string,
      headers: credentials.tokenService,
      threads: config.h2loadThreads,
      clients: config.h2loadClients,
      streamsPerClient: config.h2loadStreams,
      seconds,
      logPath: join(workDir, `h2load-${target.name}-${logName}.log`),
    });
  // Warm-up, unmeasured: the JIT and every cache see this load before the first round.
  for (const target of targets) await h2load(target, config.h2loadWarmupSeconds, "warm-up");
  const runs = new Map<string, HeadlineRun[]>(targets.map((target) => [target.name, []]));
  for (let round = 0; round < config.rounds; round++) {
    // Each round starts with a different target, so that none is always first or last.
    const order = targets.map((_, index) => targets[(index + round) % targets.length] as Target);
    for (const target of order) {
      const cpu = cpuWindow(target);
      const result = await h2load(target, config.h2loadSeconds, String(round));
      const endUs = nowUs();
      const figures = await cpu.end();
      runs.get(target.name)?.push({
        round,
        result,
        cpu: figures,
        windowUs: [endUs - config.h2loadSeconds * 1e6, endUs],
      });
      progress(
        `  round ${round + 1} ${target.label}: ${Math.round(result.requestsPerSecond)} req/s, ` +
          `p99 ${result.p99Ms.toFixed(2)} ms (server CPU ${figures.server.toFixed(0)}%, machine ${figures.machine.toFixed(0)}%)` +
          (result.non2xx > 0 ? `; ${result.non2xx} FAILED` : ""),
      );
    }
  }
  return { connectionId, runs, answerBytes };
}

// ---------------------------------------------------------------------------------------------
// The project's own client: many distinct ids with the state mix, creates, pages

export interface ClientRunFigures {
  readonly result: LoadResult;
  readonly cpu: CpuFigures;
  /** process.hrtime microseconds of the measured part (for the service's CPU profile). */
  readonly windowUs: readonly [number, number];
}

export async function load(
  { workDir }: Bench,
  target: Target,
  name: string,
  plan: Omit<LoadPlan, "url" | "kind">,
): Promise<ClientRunFigures> {
  const path = join(workDir, `plan-${target.name}-${name}.json`);
  writeFileSync(path, JSON.stringify({ ...plan, kind: "load", url: target.url }));
  let window: ReturnType<typeof cpuWindow> | undefined;
  let figures: Promise<CpuFigures> | undefined;
  const run = await runClient<LoadPlan>(path, (edge) => {
    if (edge === "start") window = cpuWindow(target);
    else figures = window?.end();
  });
  const cpu = (await figures) ?? {
    serverSeconds: Number.NaN,
    server: Number.NaN,
    client: 0,
    database: undefined,
    machine: Number.NaN,
  };
  // The load client is still running when its window ends: it reports its own CPU.
  return { result: run.result, cpu: { ...cpu, client: run.result.clientCpuPercent }, windowUs: run.windowUs };
}

export function loadPlan(
  path: string,
  headers: Record<string, string>,
  requests: readonly RequestItem[],
  reuse: boolean,
) {
  return {
    path,
    headers,
    requests,
    reuse,
    sessions: config.sessions,
    concurrency: config.concurrency,
    warmupSeconds: config.warmupSeconds,
    seconds: config.seconds,
  };
}

export function describeRun(name: string, run: ClientRunFigures): void {
  const { result } = run;
  const errors = Object.values(result.errors).reduce((sum, times) => sum + times, 0) + result.wrongAnswers;
  progress(
    `  ${name}: ${Math.round(result.requestsPerSecond)} req/s, p50 ${result.latency.p50Ms.toFixed(2)} ms, ` +
      `p99 ${result.latency.p99Ms.toFixed(2)} ms (server CPU ${run.cpu.server.toFixed(0)}%, ` +
      `client CPU ${result.clientCpuPercent.toFixed(0)}%)${errors > 0 ? `; ${errors} FAILED` : ""}`,
  );
}

/** CheckConnection over the pool of distinct ids: the services and grpc-js, alternating rounds. */
export async function runDistinctChecks(bench: Bench): Promise<Map<string, ClientRunFigures[]>> {
  const { targets, credentials } = bench;
  // The BENCH_COMPARE_ROOT service is in the headline only.
  const services = targets.filter((target) => target.service !== undefined && target.name !== "compare");
  const grpcJs = targets.find((target) => target.name === "grpc-js");
  const measured = grpcJs === undefined ? services : [grpcJs, ...services];
  const runs = new Map<string, ClientRunFigures[]>(measured.map((target) => [target.name, []]));
  // grpc-js answers every request the same: it gets the first service's pool, status checked only.
  const fixedAnswers = (services[0]?.service?.checks ?? []).map(({ body }) => ({ body }));
  for (let round = 0; round < config.clientRounds; round++) {
    for (const target of measured) {
      const pool = target.service?.checks ?? fixedAnswers;
      const run = await load(
        bench,
        target,
        `check-${round}`,
        loadPlan(CHECK_PATH, credentials.tokenService, pool, true),
      );
      describeRun(`round ${round + 1} ${target.label} CheckConnection, ${count(pool.length)} distinct requests`, run);
      runs.get(target.name)?.push(run);
    }
  }
  return runs;
}

/** BatchCheckConnection runs of one service, and its answers verified check by check beforehand. */
export interface BatchRuns {
  readonly runs: ClientRunFigures[];
  readonly checks: number;
  readonly wrong: number;
  readonly failures: number;
  readonly examples: readonly string[];
}

/**
 * BatchCheckConnection over each service's own check pool regrouped into batches, in alternating
 * rounds like the single checks; every batch's answers are verified once before the runs.
 */
export async function runBatchChecks(bench: Bench): Promise<Map<string, BatchRuns>> {
  const { targets, credentials } = bench;
  const services = targets.filter((target) => target.service !== undefined && target.name !== "compare");
  const batches = new Map<string, BatchRuns & { readonly requests: readonly RequestItem[] }>();
  for (const target of services) {
    const items = batchCheckRequests(target.service?.checks ?? [], config.batchSize);
    progress(`  ${target.label} BatchCheckConnection: verifying the answers of ${count(items.length)} batches`);
    const verified = await verifyBatches(target.url, credentials.tokenService, items);
    batches.set(target.name, { ...verified, runs: [], requests: items.map(({ body }) => ({ body })) });
  }
  for (let round = 0; round < config.clientRounds; round++) {
    for (const target of services) {
      const batch = batches.get(target.name);
      if (batch === undefined) continue;
      const plan = loadPlan(BATCH_CHECK_PATH, credentials.tokenService, batch.requests, true);
      const run = await load(bench, target, `batch-${round}`, plan);
      describeRun(`round ${round + 1} ${target.label} BatchCheckConnection (${config.batchSize} checks per call)`, run);
      batch.runs.push(run);
    }
  }
  return new Map([...batches].map(([name, { requests, ...runs }]) => [name, runs]));
}

export interface ServiceExtras {
  readonly create: ClientRunFigures;
  readonly list: ListResult;
  readonly peakRssMiB: number;
}

export async function runServiceExtras(bench: Bench, target: Target): Promise<ServiceExtras> {
  const { workDir, credentials } = bench;
  const service = target.service;
  if (service === undefined) throw new Error(`${target.name} is not a service`);
  const creates = createRequests(
    service.seed.dataset,
    config.createPool,
    config.randomSeed + 1,
    randomBytes(4).toString("hex"),
  );
  const create = await load(bench, target, "create", loadPlan(CREATE_PATH, credentials.apiGateway, creates, false));
  describeRun(`${target.label} CreateConnection`, create);

  const listPlanPath = join(workDir, `plan-${target.name}-list.json`);
  const listPlan: ListPlan = {
    kind: "list",
    url: target.url,
    path: LIST_PATH,
    headers: { ...credentials.apiGateway, "x-organization-id": service.seed.dataset.bigOrganizationId },
    sessions: 1,
    pageSize: config.pageSize,
    repeats: config.listRepeats,
  };
  writeFileSync(listPlanPath, JSON.stringify(listPlan));
  progress(`  ${target.label} ListConnections: walking every page of the big organization`);
  const list = (await runClient<ListPlan>(listPlanPath, () => {})).result;
  return { create, list, peakRssMiB: statusMiB(target.server.pid, "VmHWM") };
}
