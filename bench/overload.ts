// The overload section of `npm run bench`: a retry storm from one caller while others keep calling.
//
// First the storm caller's capacity (h2load at the headline's modest concurrency, every answer
// OK). Then the storm: h2load holds STORM_CLIENTS x STORM_STREAMS calls in flight for
// STORM_SECONDS, resending each one the moment it is answered (as a client retrying without
// backoff does), while canaries on their own connections call GetConnection every 50 ms with a 5 s
// deadline. Goodput is the storm's OK answers per second (refusals carry no DATA frame, so OK
// answers are the DATA bytes over one OK answer's bytes); the service's RSS is sampled throughout.
// After the storm the canaries go on for a while, to see how soon they are answered normally
// again and whether the memory comes back. Run twice: the token service storming with the
// dashboard and the gateway as canaries, then the gateway storming with the token service as canary.
//
// Prints figures and returns the goal verdicts; asserts nothing itself.

import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { create, toBinary } from "@bufbuild/protobuf";
import { GetConnectionRequestSchema } from "../gen/connections/v1/connection_service_pb.js";
import { type Answer, type Channel, Errors, failureOf, frame, type Headers, openChannel } from "./grpc-client.js";
import { type H2loadSummary, runH2loadSummary } from "./h2load.js";
import { statusMiB } from "./processes.js";
import { CHECK_PATH } from "./workload.js";

export const GET_PATH = "/connections.v1.ConnectionService/GetConnection";

const STORM_CLIENTS = 200;
const STORM_STREAMS = 100;
const CANARY_INTERVAL_MS = 50;
const CANARY_DEADLINE_MS = 5_000;
/** How long after the storm the canaries must be answered normally again. */
const RECOVERY_MS = 1_000;
/** The storm's canary latencies are also printed per slice of this length: is it the first wave, or all along? */
const SLICE_MS = 5_000;
/** How long the canaries and the RSS sampling go on after the storm. */
const AFTER_MS = 5_000;
/** RSS is read once more this long after the storm, for information: V8 shrinks its young generation only once 5 s of quiet are behind it. */
const LATER_MS = 10_000;
/** Quiet before the idle RSS is read and before each scenario, so that one run's backlog is not the next one's load. */
const SETTLE_MS = 5_000;

const GOALS = {
  goodputVsCapacity: 0.9,
  canaryP99Ms: 100,
  rssDuringVsIdle: 1.5,
  rssAfterVsIdle: 1.1,
} as const;

/** A caller's calls: the headers that name it, the RPC and the framed request. */
export interface CallerCalls {
  readonly name: string;
  readonly headers: Headers;
  readonly path: string;
  readonly body: Buffer;
}

export interface OverloadScenario {
  readonly storm: CallerCalls;
  readonly canaries: readonly CallerCalls[];
}

export interface OverloadInputs {
  readonly url: string;
  /** The service's process, for its RSS. */
  readonly pid: number;
  readonly h2load: string;
  /** Where h2load's request bodies and logs go. */
  readonly workDir: string;
  readonly scenarios: readonly OverloadScenario[];
  readonly seconds: number;
  readonly capacitySeconds: number;
}

export interface StormCallers {
  readonly tokenService: Headers;
  readonly apiGateway: Headers;
  readonly dashboard: Headers;
}

/**
 * The two scenarios: the token service storming with allowed checks (`checkBody`, framed) while
 * the dashboard and the gateway read a Connection; then the gateway storming with GetConnection
 * while the token service reads one.
 */
export function overloadScenarios(
  callers: StormCallers,
  checkBody: Buffer,
  connection: { readonly id: string; readonly source: string },
): OverloadScenario[] {
  const get = (name: string, headers: Headers): CallerCalls => ({
    name,
    headers: { ...headers, "x-organization-id": connection.source },
    path: GET_PATH,
    body: frame(toBinary(GetConnectionRequestSchema, create(GetConnectionRequestSchema, { id: connection.id }))),
  });
  const check: CallerCalls = {
    name: "token-service",
    headers: callers.tokenService,
    path: CHECK_PATH,
    body: checkBody,
  };
  return [
    { storm: check, canaries: [get("dashboard-bff", callers.dashboard), get("api-gateway", callers.apiGateway)] },
    { storm: get("api-gateway", callers.apiGateway), canaries: [get("token-service", callers.tokenService)] },
  ];
}

/** One call's DATA bytes (an OK answer's size, to count OK answers in h2load's byte totals); throws unless OK. */
async function okAnswerBytes(url: string, calls: CallerCalls): Promise<number> {
  const errors = new Errors();
  const channel = await openChannel({ url, path: calls.path, sessions: 1 }, errors);
  try {
    const answer = await new Promise<Answer>((resolve) => channel.call(0, calls.headers, calls.body, resolve));
    const failure = failureOf(answer) ?? Object.keys(errors.counts)[0];
    if (failure !== undefined) throw new Error(`${calls.name} ${calls.path}: ${failure}`);
    return answer.body.length;
  } finally {
    channel.close();
  }
}

interface CanaryCall {
  readonly startedAt: number;
  readonly ms: number;
  readonly failure: string | undefined;
}

/** GetConnection (or any unary call) every CANARY_INTERVAL_MS on a connection of its own. */
class Canary {
  readonly calls: CanaryCall[] = [];
  /** Connection failures (session errors, GOAWAY codes), by description. */
  readonly errors = new Errors();
  private channel: Channel | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly headers: Headers;
  /** When each call still unanswered started: at the end they count as failed. */
  private readonly pending = new Set<number>();

  constructor(
    private readonly url: string,
    readonly caller: CallerCalls,
  ) {
    this.headers = { ...caller.headers, "grpc-timeout": `${CANARY_DEADLINE_MS}m` };
  }

  async start(): Promise<void> {
    this.channel = await this.connect();
    this.timer = setInterval(() => this.callOnce(), CANARY_INTERVAL_MS);
  }

  /**
   * Stops calling, waits for the calls in flight (a call sent just before was counted as failed,
   * and closing the connection under it drew the server's GOAWAY), then closes the connection. A
   * call still unanswered after its deadline counts as failed.
   */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    const until = performance.now() + CANARY_DEADLINE_MS + 1_000;
    while (this.pending.size > 0 && performance.now() < until) await sleep(10);
    this.channel?.close();
    for (const startedAt of this.pending) {
      this.calls.push({ startedAt, ms: Number.POSITIVE_INFINITY, failure: "no answer" });
    }
    this.pending.clear();
  }

  private connect(): Promise<Channel> {
    return openChannel({ url: this.url, path: this.caller.path, sessions: 1 }, this.errors);
  }

  private callOnce(): void {
    const startedAt = performance.now();
    this.pending.add(startedAt);
    const record = (failure: string | undefined) => {
      if (!this.pending.delete(startedAt)) return;
      this.calls.push({ startedAt, ms: performance.now() - startedAt, failure });
    };
    const channel = this.channel;
    if (channel === undefined) {
      record("no connection");
      return;
    }
    try {
      channel.call(0, this.headers, this.caller.body, (answer) => record(failureOf(answer)));
    } catch (error) {
      // The connection was lost: replaced, as a client's channel would; the loss counts as a failure.
      record(`connection lost: ${(error as Error).message}`);
      this.channel = undefined;
      void this.connect().then((replacement) => {
        this.channel = replacement;
      });
    }
  }
}

function percentile(values: readonly number[], fraction: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil(fraction * sorted.length) - 1)] ?? Number.NaN;
}

/** OK answers in an h2load run: refusals are trailers-only, so every DATA byte belongs to an OK answer. */
function okAnswers(result: H2loadSummary, okAnswerBytes: number): number {
  return (result.dataBytesPerAnswer * result.answers2xx) / okAnswerBytes;
}

export async function runOverload(
  inputs: OverloadInputs,
  log: (line?: string) => void,
  progress: (line: string) => void,
): Promise<string[]> {
  const verdicts: string[] = [];
  const bodyFile = (calls: CallerCalls) => {
    const path = join(inputs.workDir, `overload-${calls.name}.bin`);
    writeFileSync(path, calls.body);
    return path;
  };
  const verdict = (label: string, value: number, goal: number, atMost: boolean) => {
    const met = atMost ? value <= goal : value >= goal;
    verdicts.push(`${met ? "MET" : "NOT MET"}: ${label} ${value.toFixed(2)} (goal ${atMost ? "<=" : ">="} ${goal})`);
  };
  for (const scenario of inputs.scenarios) {
    await sleep(SETTLE_MS);
    const { storm } = scenario;
    const title = `${storm.name} storm, ${scenario.canaries.map((canary) => canary.name).join(" and ")} canar${scenario.canaries.length > 1 ? "ies" : "y"}`;
    const path = bodyFile(storm);
    const stormAnswerBytes = await okAnswerBytes(inputs.url, storm);
    for (const canary of scenario.canaries) await okAnswerBytes(inputs.url, canary);
    progress(`overload: ${title}: capacity (h2load -c8 -m16, ${inputs.capacitySeconds} s)`);
    const capacityRun = await runH2loadSummary(inputs.h2load, {
      url: inputs.url,
      path: storm.path,
      bodyPath: path,
      headers: storm.headers,
      threads: 1,
      clients: 8,
      streamsPerClient: 16,
      seconds: inputs.capacitySeconds,
    });
    const capacity = okAnswers(capacityRun, stormAnswerBytes) / inputs.capacitySeconds;
    await sleep(SETTLE_MS);
    const idleRss = statusMiB(inputs.pid, "VmRSS");

    progress(`overload: ${title}: ${STORM_CLIENTS * STORM_STREAMS} calls in flight for ${inputs.seconds} s`);
    const canaries = scenario.canaries.map((calls) => new Canary(inputs.url, calls));
    for (const canary of canaries) await canary.start();
    await sleep(1_000);
    let peakRss = 0;
    const sampler = setInterval(() => {
      peakRss = Math.max(peakRss, statusMiB(inputs.pid, "VmRSS"));
    }, 250);
    const stormStart = performance.now();
    const stormRun = await runH2loadSummary(inputs.h2load, {
      url: inputs.url,
      path: storm.path,
      bodyPath: path,
      headers: storm.headers,
      threads: 1,
      clients: STORM_CLIENTS,
      streamsPerClient: STORM_STREAMS,
      seconds: inputs.seconds,
    });
    const stormEnd = performance.now();
    clearInterval(sampler);
    await sleep(AFTER_MS);
    const afterRss = statusMiB(inputs.pid, "VmRSS");
    await Promise.all(canaries.map((canary) => canary.stop()));
    await sleep(LATER_MS - AFTER_MS);
    const laterRss = statusMiB(inputs.pid, "VmRSS");

    const goodput = okAnswers(stormRun, stormAnswerBytes) / inputs.seconds;
    log();
    log(`Overload: ${title}`);
    log(
      `  capacity ${capacity.toFixed(0)} OK/s; storm: ${(stormRun.answers2xx / inputs.seconds).toFixed(0)} answers/s, ` +
        `${goodput.toFixed(0)} of them OK (goodput ${(goodput / capacity).toFixed(2)}x capacity), the rest refused; ` +
        `${stormRun.failed} streams failed without an answer (reset, or open when h2load stopped)`,
    );
    log(
      `  service RSS: idle ${idleRss.toFixed(0)} MiB, peak during ${peakRss.toFixed(0)} MiB (${(peakRss / idleRss).toFixed(2)}x), ` +
        `${AFTER_MS / 1000} s after ${afterRss.toFixed(0)} MiB (${(afterRss / idleRss).toFixed(2)}x), ` +
        `${LATER_MS / 1000} s after ${laterRss.toFixed(0)} MiB (${(laterRss / idleRss).toFixed(2)}x)`,
    );
    verdict(`${title}: goodput / capacity`, goodput / capacity, GOALS.goodputVsCapacity, false);
    verdict(`${title}: RSS during / idle`, peakRss / idleRss, GOALS.rssDuringVsIdle, true);
    verdict(`${title}: RSS after / idle`, afterRss / idleRss, GOALS.rssAfterVsIdle, true);
    for (const canary of canaries) {
      const during = canary.calls.filter((call) => call.startedAt >= stormStart && call.startedAt < stormEnd);
      const after = canary.calls.filter((call) => call.startedAt >= stormEnd + RECOVERY_MS);
      const failures = during.filter((call) => call.failure !== undefined);
      const p99 = percentile(
        during.map((call) => call.ms),
        0.99,
      );
      const afterWorst = Math.max(...after.map((call) => call.ms));
      const afterFailures = after.filter((call) => call.failure !== undefined).length;
      log(
        `  ${canary.caller.name} canary during: ${during.length} calls, p50 ${percentile(
          during.map((call) => call.ms),
          0.5,
        ).toFixed(1)} ms, p99 ${p99.toFixed(1)} ms, max ${Math.max(...during.map((call) => call.ms)).toFixed(1)} ms, ` +
          `${failures.length} failed${failures[0] === undefined ? "" : ` (first: ${failures[0].failure})`}; ` +
          `from ${RECOVERY_MS / 1000} s after: ${after.length} calls, worst ${afterWorst.toFixed(1)} ms, ${afterFailures} failed` +
          (Object.keys(canary.errors.counts).length === 0
            ? ""
            : `; connection failures: ${Object.entries(canary.errors.counts)
                .map(([why, count]) => `${why} x${count}`)
                .join(", ")}`),
      );
      const slices: string[] = [];
      for (let from = stormStart; from < stormEnd; from += SLICE_MS) {
        const slice = during.filter((call) => call.startedAt >= from && call.startedAt < from + SLICE_MS);
        const ms = slice.map((call) => call.ms);
        slices.push(`${percentile(ms, 0.5).toFixed(0)}/${percentile(ms, 0.99).toFixed(0)}`);
      }
      log(`    p50/p99 ms in each ${SLICE_MS / 1000} s of the storm: ${slices.join(", ")}`);
      verdict(`${title}: ${canary.caller.name} canary p99 ms`, p99, GOALS.canaryP99Ms, true);
      verdict(`${title}: ${canary.caller.name} canary failures during`, failures.length, 0, true);
      verdict(
        `${title}: ${canary.caller.name} canary worst ms from ${RECOVERY_MS / 1000} s after (failures ${afterFailures})`,
        afterFailures > 0 ? Number.POSITIVE_INFINITY : afterWorst,
        GOALS.canaryP99Ms,
        true,
      );
    }
  }
  return verdicts;
}
