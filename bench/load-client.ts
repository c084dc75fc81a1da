// The load generator, run as its own process (`fork`, plan file as argv[2]) so that it never
// shares an event loop with a server. It speaks raw gRPC over HTTP/2 (h2.ts, or node:http2 with
// BENCH_CLIENT=node-http2 as a cross-check): pre-framed protobuf bodies, `content-type:
// application/grpc`, `te: trailers`, and grpc-status read from the trailers (or from a
// trailers-only answer). Every latency goes into a histogram; every failure is counted by
// description. Reports back over IPC.

import { readFileSync } from "node:fs";
import http2 from "node:http2";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  ListConnectionsRequestSchema,
  ListConnectionsResponseSchema,
} from "../gen/connections/v1/connection_service_pb.js";
import { type Answer, encodeHeaderBlock, GrpcConnection } from "./h2.js";
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

class Errors {
  readonly counts: Record<string, number> = {};
  add(description: string): void {
    this.counts[description] = (this.counts[description] ?? 0) + 1;
  }
}

function frame(body: Uint8Array): Buffer {
  const framed = Buffer.alloc(5 + body.length);
  framed.writeUInt32BE(body.length, 1);
  framed.set(body, 5);
  return framed;
}

/** Why an answer is a failure, or undefined when it is a well-formed OK. */
function failureOf(answer: Answer): string | undefined {
  if (answer.error !== undefined) return answer.error;
  if (answer.status === undefined) return "no grpc-status";
  if (answer.status !== "0") return `grpc-status ${answer.status}: ${answer.message ?? ""}`;
  if (answer.body.length < 5 || answer.body.readUInt32BE(1) !== answer.body.length - 5) return "malformed frame";
  return undefined;
}

/** CheckConnectionResponse.reason (field 2) of a framed answer, read without decoding the rest. */
function checkReason(framed: Buffer): number {
  let offset = 5;
  const varint = (): number => {
    let value = 0;
    let shift = 0;
    for (;;) {
      const byte = framed[offset++] ?? 0;
      value += (byte & 0x7f) * 2 ** shift;
      if (byte < 0x80 || offset >= framed.length) return value;
      shift += 7;
    }
  };
  while (offset < framed.length) {
    const tag = varint();
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    if (field === 2 && wire === 0) return varint();
    if (wire === 0) varint();
    else if (wire === 2) offset += varint();
    else if (wire === 1) offset += 8;
    else if (wire === 5) offset += 4;
    else return -1;
  }
  return 0; // absent: the proto3 default, REASON_UNSPECIFIED
}

// ---------------------------------------------------------------------------------------------
// Channels: `sessions` HTTP/2 connections, and a call that goes out on the one a slot is bound to.

type Headers = Readonly<Record<string, string>>;

interface Channel {
  call(slot: number, headers: Headers, body: Buffer, done: (answer: Answer) => void): void;
  close(): void;
}

/** Header blocks are encoded once per distinct headers object. */
async function rawChannel(plan: Plan): Promise<Channel> {
  const url = new URL(plan.url);
  const connections = await Promise.all(
    Array.from({ length: plan.sessions }, () => GrpcConnection.connect(url.hostname, Number(url.port))),
  );
  const blocks = new WeakMap<Headers, Buffer>();
  const blockOf = (headers: Headers) => {
    let block = blocks.get(headers);
    if (block === undefined) {
      block = encodeHeaderBlock([
        [":method", "POST"],
        [":scheme", "http"],
        [":path", plan.path],
        [":authority", url.host],
        ["content-type", "application/grpc"],
        ["te", "trailers"],
        ...Object.entries(headers),
      ]);
      blocks.set(headers, block);
    }
    return block;
  };
  return {
    call: (slot, headers, body, done) =>
      (connections[slot % connections.length] as GrpcConnection).call(blockOf(headers), body, done),
    close: () => {
      for (const connection of connections) connection.close();
    },
  };
}

async function nodeChannel(plan: Plan, errors: Errors): Promise<Channel> {
  const sessions = await Promise.all(
    Array.from(
      { length: plan.sessions },
      () =>
        new Promise<http2.ClientHttp2Session>((resolve, reject) => {
          const session = http2.connect(plan.url);
          session.once("connect", () => resolve(session));
          session.once("error", reject);
          session.on("error", (error: Error) => errors.add(`session error: ${error.message}`));
          session.on("goaway", (code: number) => errors.add(`GOAWAY ${code}`));
        }),
    ),
  );
  const base = { ":method": "POST", ":path": plan.path, "content-type": "application/grpc", te: "trailers" };
  const objects = new WeakMap<Headers, http2.OutgoingHttpHeaders>();
  return {
    call(slot, headers, body, done) {
      let outgoing = objects.get(headers);
      if (outgoing === undefined) {
        outgoing = { ...base, ...headers };
        objects.set(headers, outgoing);
      }
      const session = sessions[slot % sessions.length] as http2.ClientHttp2Session;
      let status: string | undefined;
      let message: string | undefined;
      let httpStatus: string | undefined;
      let error: string | undefined;
      const chunks: Buffer[] = [];
      const stream = session.request(outgoing, { endStream: false });
      const read = (fields: http2.IncomingHttpHeaders) => {
        httpStatus ??= fields[":status"] === undefined ? undefined : String(fields[":status"]);
        if (fields["grpc-status"] !== undefined) {
          status = String(fields["grpc-status"]);
          message =
            fields["grpc-message"] === undefined ? undefined : decodeURIComponent(String(fields["grpc-message"]));
        }
      };
      stream.on("response", read);
      stream.on("trailers", read);
      stream.on("data", (chunk: Buffer) => chunks.push(chunk));
      stream.on("error", (cause: Error) => {
        error = `stream error: ${cause.message}`;
      });
      stream.on("close", () => {
        if (error === undefined && stream.rstCode !== undefined && stream.rstCode !== 0) {
          error = `stream reset with code ${stream.rstCode}`;
        }
        if (error === undefined && httpStatus !== "200") error = `HTTP status ${httpStatus}`;
        done({ status, message, body: chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks), error });
      });
      stream.end(body);
    },
    close() {
      for (const session of sessions) session.close();
    },
  };
}

function openChannel(plan: Plan, errors: Errors): Promise<Channel> {
  return plan.client === "node-http2" ? nodeChannel(plan, errors) : rawChannel(plan);
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
