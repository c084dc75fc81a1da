// h2load (nghttp2's HTTP/2 load generator, Debian package nghttp2-client) as the headline
// measurement: an independent C client that anyone can run against any of the servers. It posts
// one file as the body of every request and sees HTTP only, so the gRPC status of the answers is
// checked another way (see clients.ts: one call before the run, and the DATA bytes per answer after).
// Latency percentiles come from its --log-file (one line per request). No --warm-up-time: its
// byte counters would then include the warm-up while its request counters do not; warm up with a
// run of its own instead.

import { execFileSync, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { aptInstall } from "./apt.js";

export interface H2loadOptions {
  readonly url: string;
  /** The request body file: one 5-byte-framed gRPC message. */
  readonly bodyPath: string;
  readonly headers: Readonly<Record<string, string>>;
  readonly threads: number;
  readonly clients: number;
  readonly streamsPerClient: number;
  readonly seconds: number;
  /** The RPC's path; CheckConnection when left out. */
  readonly path?: string;
}

export interface H2loadLoggedOptions extends H2loadOptions {
  /** Where h2load writes one line per request (start us, HTTP status, duration us). */
  readonly logPath: string;
}

/** h2load's own summary. */
export interface H2loadSummary {
  readonly requestsPerSecond: number;
  readonly done: number;
  /** Requests that failed, errored or timed out (streams still open when the time ran out count as failed). */
  readonly failed: number;
  /** Answers with an HTTP status other than 2xx. */
  readonly non2xx: number;
  /** Answers with a 2xx HTTP status (a gRPC answer of any status). */
  readonly answers2xx: number;
  /** Bytes of DATA frame payload received, per 2xx answer: every answer carries the same bytes when all are alike. */
  readonly dataBytesPerAnswer: number;
  /** From h2load's own summary ("time for request"). */
  readonly meanMs: number;
  readonly sdMs: number;
  readonly maxMs: number;
}

export interface H2loadResult extends H2loadSummary {
  /** From the per-request log, over the measured window. */
  readonly p50Ms: number;
  readonly p90Ms: number;
  readonly p99Ms: number;
}

/** The h2load binary, installed with apt-get when missing and running as root; otherwise an error that says how. */
export function ensureH2load(progress: (line: string) => void): string {
  const found = () => {
    try {
      return execFileSync("sh", ["-c", "command -v h2load"], { encoding: "utf8" }).trim() || undefined;
    } catch {
      return undefined;
    }
  };
  const existing = found();
  if (existing !== undefined) return existing;
  if (aptInstall("nghttp2-client", progress)) {
    const installed = found();
    if (installed !== undefined) return installed;
  }
  throw new Error(
    "h2load is not installed: run `sudo apt-get install nghttp2-client` (Debian/Ubuntu) and try again; " +
      "BENCH_H2LOAD=off skips the headline measurement",
  );
}

/** A run with its per-request log, read for latency percentiles once h2load is done. */
export async function runH2load(binary: string, options: H2loadLoggedOptions): Promise<H2loadResult> {
  const summary = await summarizedRun(binary, options, [`--log-file=${options.logPath}`]);
  return { ...summary, ...percentiles(options.logPath, options.seconds) };
}

/**
 * A run with h2load's summary alone. Reading a long run's log takes the bench's thread about half a
 * second (200,000 lines for a 20 s storm), in which calls the bench itself times, such as the
 * overload section's canaries, would wait for it and be timed as slow.
 */
export function runH2loadSummary(binary: string, options: H2loadOptions): Promise<H2loadSummary> {
  return summarizedRun(binary, options, []);
}

async function summarizedRun(
  binary: string,
  options: H2loadOptions,
  extraArgs: readonly string[],
): Promise<H2loadSummary> {
  const args = [
    `-t${options.threads}`,
    `-c${options.clients}`,
    `-m${options.streamsPerClient}`,
    `-D${options.seconds}`,
    `-d${options.bodyPath}`,
    ...extraArgs,
    "-Hcontent-type: application/grpc",
    "-Hte: trailers",
    ...Object.entries(options.headers).map(([name, value]) => `-H${name}: ${value}`),
    `${options.url}${options.path ?? "/connections.v1.ConnectionService/CheckConnection"}`,
  ];
  const output = await new Promise<string>((resolve, reject) => {
    const child = spawn(binary, args, { stdio: ["ignore", "pipe", "pipe"] });
    let text = "";
    child.stdout.on("data", (chunk: Buffer) => {
      text += chunk.toString();
    });
    child.stderr.on("data", (chunk: Buffer) => {
      text += chunk.toString();
    });
    child.once("error", reject);
    child.once("exit", (code) => (code === 0 ? resolve(text) : reject(new Error(`h2load exited ${code}:\n${text}`))));
  });
  return parseSummary(output);
}

const UNIT_MS: Readonly<Record<string, number>> = { us: 0.001, ms: 1, s: 1000 };

function parseSummary(output: string): H2loadSummary {
  const fail = (what: string) => new Error(`h2load output has no ${what}:\n${output}`);
  const rate = /finished in [\d.]+s, ([\d.]+) req\/s/.exec(output);
  const requests =
    /requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/.exec(
      output,
    );
  const status = /status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/.exec(output);
  const data = /traffic: .* \((\d+)\) data/.exec(output);
  const time = /time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)/.exec(
    output,
  );
  if (rate === null) throw fail("'finished in' line");
  if (requests === null) throw fail("'requests:' line");
  if (status === null) throw fail("'status codes:' line");
  if (data === null) throw fail("'traffic:' line");
  if (time === null) throw fail("'time for request:' line");
  const ms = (value: string | undefined, unit: string | undefined) => Number(value) * (UNIT_MS[unit ?? ""] ?? NaN);
  const answers = Number(status[1]);
  return {
    requestsPerSecond: Number(rate[1]),
    done: Number(requests[3]),
    failed: Number(requests[5]) + Number(requests[6]) + Number(requests[7]),
    non2xx: Number(status[2]) + Number(status[3]) + Number(status[4]),
    answers2xx: answers,
    dataBytesPerAnswer: answers === 0 ? 0 : Number(data[1]) / answers,
    maxMs: ms(time[3], time[4]),
    meanMs: ms(time[5], time[6]),
    sdMs: ms(time[7], time[8]),
  };
}

/** p50/p90/p99 of the requests that started in the last `seconds` of the log (the measured window). */
function percentiles(logPath: string, seconds: number): Pick<H2loadResult, "p50Ms" | "p90Ms" | "p99Ms"> {
  const starts: number[] = [];
  const durations: number[] = [];
  for (const line of readFileSync(logPath, "utf8").split("\n")) {
    const [start, , duration] = line.split("\t");
    if (start === undefined || duration === undefined) continue;
    starts.push(Number(start));
    durations.push(Number(duration));
  }
  let last = 0;
  for (const start of starts) if (start > last) last = start;
  const measured = durations.filter((_, index) => (starts[index] ?? 0) >= last - seconds * 1e6).sort((a, b) => a - b);
  const at = (fraction: number) =>
    measured.length === 0
      ? Number.NaN
      : (measured[Math.min(measured.length - 1, Math.ceil(fraction * measured.length) - 1)] ?? 0) / 1000;
  return { p50Ms: at(0.5), p90Ms: at(0.9), p99Ms: at(0.99) };
}
