// The project's own load generator, for what h2load cannot do: a pool of many different requests
// (100,000 distinct ids, the state mix), every answer checked (grpc-status and the
// CheckConnection reason the data set says), CreateConnection with unique bodies, and paging.
// Run as its own process (`fork`, plan file as argv[2]) so that it never shares an event loop with
// a server. It speaks gRPC over node:http2: pre-framed protobuf bodies, `content-type:
// application/grpc`, `te: trailers`, grpc-status from the trailers (or a trailers-only answer).
// Every latency goes into a histogram; every failure is counted by description. Reports back
// over IPC, with its own CPU use, so a report shows when the client was the bottleneck.

import { readFileSync } from "node:fs";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  ListConnectionsRequestSchema,
  ListConnectionsResponseSchema,
} from "../gen/connections/v1/connection_service_pb.js";
import { checkReason, Errors, failureOf, frame, type Headers, openChannel } from "./grpc-client.js";
import type { ClientMessage, LatencySummary, ListPlan, ListResult, LoadPlan, LoadResult, Plan } from "./workload.js";

/**
 * Log-linear histogram of microseconds: exact below 2048 us, then 1024 buckets per power of two
 * (under 0.1% error), up to about 70 s.
 */
class Histogram {
  readonly #counts = new Float64Array(2048 + 16 * 1024);
  #count = 0;
  #sum = 0;
  #max = 0;

  record(ms: number): void {
    const us = Math.max(0, Math.round(ms * 1000));
    let index: number;
    if (us < 2048) {
      index = us;
    } else {
      const exponent = Math.min(31 - Math.clz32(us) - 10, 16);
      index = Math.min(2048 + (exponent - 1) * 1024 + ((us >>> exponent) - 1024), this.#counts.length - 1);
    }
    this.#counts[index] = (this.#counts[index] ?? 0) + 1;
    this.#count++;
    this.#sum += ms;
    if (ms > this.#max) this.#max = ms;
  }

  #valueAt(index: number): number {
    if (index < 2048) return index / 1000;
    const exponent = Math.floor((index - 2048) / 1024) + 1;
    const mantissa = ((index - 2048) % 1024) + 1024;
    return (mantissa * 2 ** exponent) / 1000;
  }

  #percentile(fraction: number): number {
    if (this.#count === 0) return 0;
    const rank = Math.ceil(fraction * this.#count);
    let seen = 0;
    for (let index = 0; index < this.#counts.length; index++) {
      seen += this.#counts[index] ?? 0;
      if (seen >= rank) return this.#valueAt(index);
    }
    return this.#max;
  }

  summary(): LatencySummary {
    return {
      count: this.#count,
      meanMs: this.#count === 0 ? 0 : this.#sum / this.#count,
      p50Ms: this.#percentile(0.5),
      p90Ms: this.#percentile(0.9),
      p99Ms: this.#percentile(0.99),
      maxMs: this.#max,
    };
  }
}

function send(message: ClientMessage): void {
  process.send?.(message);
}

// ---------------------------------------------------------------------------------------------

async function runLoad(plan: LoadPlan): Promise<LoadResult> {
  const errors = new Errors();
  const channel = await openChannel(plan, errors);
  const frames = plan.requests.map((request) => frame(Buffer.from(request.body, "base64")));
  const headers = plan.requests.map((request) =>
    request.headers === undefined ? plan.headers : { ...plan.headers, ...request.headers },
  );
  const histogram = new Histogram();
  let wrongAnswers = 0;
  const wrongAnswerExamples: string[] = [];
  let phase: "warmup" | "measure" | "drain" = "warmup";
  let completed = 0;
  let next = 0;
  let exhausted = false;
  let measureStart = 0;
  let measureEnd = 0;
  let cpuStart = process.cpuUsage();
  let clientCpuPercent = 0;
  let timer: NodeJS.Timeout | undefined;

  let warmupTimeUp = false;
  const startMeasure = () => {
    phase = "measure";
    measureStart = performance.now();
    cpuStart = process.cpuUsage();
    send({ type: "measure-start" });
    timer = setTimeout(endMeasure, plan.seconds * 1000);
  };
  const endMeasure = () => {
    if (phase !== "measure") return;
    phase = "drain";
    clearTimeout(timer);
    measureEnd = performance.now();
    const cpu = process.cpuUsage(cpuStart);
    clientCpuPercent = ((cpu.user + cpu.system) / 1000 / (measureEnd - measureStart)) * 100;
    send({ type: "measure-end" });
  };

  await new Promise<void>((resolve) => {
    let inFlight = 0;
    const issue = (slot: number) => {
      if (phase === "drain" || (!plan.reuse && next >= frames.length)) {
        if (phase !== "drain") {
          exhausted = true;
          if (phase === "warmup") {
            phase = "measure";
            measureStart = performance.now();
          }
          endMeasure();
        }
        if (--inFlight === 0) resolve();
        return;
      }
      const index = plan.reuse ? next++ % frames.length : next++;
      if (phase === "warmup" && warmupTimeUp && next >= frames.length) startMeasure();
      const began = performance.now();
      channel.call(slot, headers[index] as Headers, frames[index] as Buffer, (answer) => {
        const failure = failureOf(answer);
        if (failure !== undefined) {
          errors.add(failure);
        } else {
          const expected = plan.requests[index]?.expectReason;
          const reason = expected === undefined ? undefined : checkReason(answer.body);
          if (reason !== expected) {
            wrongAnswers++;
            if (wrongAnswerExamples.length < 5) {
              wrongAnswerExamples.push(`request ${index}: reason ${reason}, expected ${expected}`);
            }
          } else if (phase === "measure") {
            histogram.record(performance.now() - began);
            completed++;
          }
        }
        issue(slot);
      });
    };
    // Reused requests warm up for the warm-up time and at least one pass over the pool, so that
    // caches hold what a long-running process would have in them.
    timer = setTimeout(() => {
      warmupTimeUp = true;
      if (!plan.reuse || next >= frames.length) startMeasure();
    }, plan.warmupSeconds * 1000);
    for (let slot = 0; slot < plan.concurrency; slot++) {
      inFlight++;
      issue(slot);
    }
  });
  channel.close();
  const seconds = (measureEnd - measureStart) / 1000;
  return {
    kind: "load",
    completed,
    seconds,
    requestsPerSecond: seconds > 0 ? completed / seconds : 0,
    latency: histogram.summary(),
    errors: errors.counts,
    wrongAnswers,
    wrongAnswerExamples,
    clientCpuPercent,
    exhausted,
  };
}

async function runList(plan: ListPlan): Promise<ListResult> {
  const errors = new Errors();
  const channel = await openChannel({ ...plan, sessions: 1 }, errors);
  const page = (pageToken: string) =>
    new Promise<{ ms: number; rows: number; nextPageToken: string }>((resolve) => {
      const request = create(ListConnectionsRequestSchema, { pageSize: plan.pageSize, pageToken });
      const body = frame(toBinary(ListConnectionsRequestSchema, request));
      const began = performance.now();
      channel.call(0, plan.headers, body, (answer) => {
        const ms = performance.now() - began;
        const failure = failureOf(answer);
        if (failure !== undefined) {
          errors.add(failure);
          resolve({ ms, rows: 0, nextPageToken: "" });
          return;
        }
        const response = fromBinary(ListConnectionsResponseSchema, answer.body.subarray(5));
        resolve({ ms, rows: response.connections.length, nextPageToken: response.nextPageToken });
      });
    });

  // Warm up the connection and the first page's plan, then walk every page.
  for (let index = 0; index < 20; index++) await page("");
  let pages = 0;
  const fullPageTokens: string[] = [];
  let rows = 0;
  let token = "";
  const walkStarted = performance.now();
  for (;;) {
    const result = await page(token);
    pages++;
    rows += result.rows;
    if (result.rows === plan.pageSize) fullPageTokens.push(token);
    if (result.nextPageToken === "") break;
    token = result.nextPageToken;
  }
  const walkSeconds = (performance.now() - walkStarted) / 1000;

  // Then the first and the deepest full page again, alternately, so that drift hits both alike.
  const deepToken = fullPageTokens.at(-1) ?? "";
  const first = new Histogram();
  const deep = new Histogram();
  for (let index = 0; index < plan.repeats; index++) {
    first.record((await page("")).ms);
    deep.record((await page(deepToken)).ms);
  }
  channel.close();
  return {
    kind: "list",
    pages,
    rows,
    walkSeconds,
    first: first.summary(),
    deepPage: fullPageTokens.length,
    deep: deep.summary(),
    errors: errors.counts,
  };
}

const planPath = process.argv[2];
if (planPath === undefined) throw new Error("usage: load-client.ts <plan.json>");
const plan = JSON.parse(readFileSync(planPath, "utf8")) as Plan;
const result = plan.kind === "load" ? await runLoad(plan) : await runList(plan);
send({ type: "result", result });
process.disconnect?.();
