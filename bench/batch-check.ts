// BatchCheckConnection in the benchmark: the check pool regrouped into batches (50 checks per call
// by default), measured in checks per second beside CheckConnection, and the answers of every batch
// in the pool verified once against what the data set says each check must answer. Kept apart from
// the single-check workload so that the load client stays protocol-agnostic: a batch is one more
// pre-encoded unary request to it.

import http2 from "node:http2";
import { fromBinary } from "@bufbuild/protobuf";
import { BatchCheckConnectionResponseSchema } from "../gen/connections/v1/connection_service_pb.js";
import type { RequestItem } from "./workload.js";

export const BATCH_CHECK_PATH = "/connections.v1.ConnectionService/BatchCheckConnection";

/** A batch request, and the reason each of its checks must be answered with. */
export interface BatchItem extends RequestItem {
  readonly expectReasons: readonly number[];
}

function varint(value: number): number[] {
  const bytes: number[] = [];
  let rest = value;
  while (rest >= 0x80) {
    bytes.push((rest & 0x7f) | 0x80);
    rest >>>= 7;
  }
  bytes.push(rest);
  return bytes;
}

/**
 * The CheckConnection pool as BatchCheckConnection requests of `size` checks each. A batch is the
 * checks' own encodings, each as field 1 (`checks`, length-delimited) of the batch message.
 */
export function batchCheckRequests(checks: readonly RequestItem[], size: number): BatchItem[] {
  const batches: BatchItem[] = [];
  for (let start = 0; start + size <= checks.length; start += size) {
    const group = checks.slice(start, start + size);
    const parts = group.flatMap((check) => {
      const body = Buffer.from(check.body, "base64");
      return [Buffer.from([0x0a, ...varint(body.length)]), body];
    });
    batches.push({
      body: Buffer.concat(parts).toString("base64"),
      expectReasons: group.map((check) => check.expectReason ?? 0),
    });
  }
  return batches;
}

/** Sends every batch once (a few at a time) and counts the checks answered with another reason. */
export async function verifyBatches(
  url: string,
  headers: Readonly<Record<string, string>>,
  batches: readonly BatchItem[],
): Promise<{ checks: number; wrong: number; failures: number; examples: string[] }> {
  const session = http2.connect(url);
  const outcome = { checks: 0, wrong: 0, failures: 0, examples: [] as string[] };
  const call = (batch: BatchItem) =>
    new Promise<void>((resolve) => {
      const body = Buffer.from(batch.body, "base64");
      const prefix = Buffer.alloc(5);
      prefix.writeUInt32BE(body.length, 1);
      const stream = session.request({
        ":method": "POST",
        ":path": BATCH_CHECK_PATH,
        "content-type": "application/grpc",
        te: "trailers",
        ...headers,
      });
      const chunks: Buffer[] = [];
      let status: string | undefined;
      stream.on("response", (received) => {
        status = received["grpc-status"] as string | undefined;
      });
      stream.on("trailers", (received) => {
        status = received["grpc-status"] as string | undefined;
      });
      stream.on("data", (chunk: Buffer) => chunks.push(chunk));
      stream.on("error", () => {
        outcome.failures++;
        resolve();
      });
      stream.on("end", () => {
        const answer = Buffer.concat(chunks);
        if (status !== "0" || answer.length < 5) {
          outcome.failures++;
        } else {
          const { results } = fromBinary(BatchCheckConnectionResponseSchema, answer.subarray(5));
          batch.expectReasons.forEach((expected, index) => {
            outcome.checks++;
            const reason = results[index]?.reason;
            if (reason === expected) return;
            outcome.wrong++;
            if (outcome.examples.length < 5)
              outcome.examples.push(`check ${index}: reason ${reason}, expected ${expected}`);
          });
        }
        resolve();
      });
      stream.end(Buffer.concat([prefix, body]));
    });
  try {
    for (let start = 0; start < batches.length; start += 16) {
      await Promise.all(batches.slice(start, start + 16).map(call));
    }
  } finally {
    session.close();
  }
  return outcome;
}
