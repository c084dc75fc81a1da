// The drain's GOAWAY in two steps, seen by a raw HTTP/2 client: requests that the server reads once
// its drain has begun, before its GOAWAY has left, are all served, none refused (a single GOAWAY,
// naming the last stream when it was queued, refuses some); the first GOAWAY names the highest
// stream id. A stream that reaches node after its first GOAWAY has left is ignored, which
// node-internals.test.ts pins and goaway.ts explains.

import http2 from "node:http2";
import { afterEach, describe, expect, it } from "vitest";
import { startTestServer } from "./harness.js";

const MAX_STREAM_ID = 2 ** 31 - 1;
/** grpc.health.v1.Health/Check for "" (an empty message): served whatever the drain says about health. */
const EMPTY_MESSAGE = Buffer.alloc(5);

interface Outcome {
  readonly grpcStatus: string | undefined;
  readonly error: string | undefined;
}

function healthCheck(session: http2.ClientHttp2Session): Promise<Outcome> {
  return new Promise((resolve) => {
    let grpcStatus: string | undefined;
    const stream = session.request({
      ":method": "POST",
      ":path": "/grpc.health.v1.Health/Check",
      "content-type": "application/grpc",
      te: "trailers",
    });
    stream.on("response", (headers) => {
      grpcStatus ??= headers["grpc-status"] as string | undefined;
    });
    stream.on("trailers", (trailers) => {
      grpcStatus = trailers["grpc-status"] as string | undefined;
    });
    stream.on("data", () => {});
    stream.on("error", (error) => resolve({ grpcStatus, error: error.message }));
    stream.on("close", () =>
      resolve({ grpcStatus, error: stream.rstCode === 0 ? undefined : `RST_STREAM ${stream.rstCode}` }),
    );
    stream.end(EMPTY_MESSAGE);
  });
}

describe("drain: GOAWAY in two steps", () => {
  const sessions: http2.ClientHttp2Session[] = [];
  afterEach(() => {
    for (const session of sessions.splice(0)) session.destroy();
  });

  it("serves every request it reads once its drain has begun", async () => {
    const server = await startTestServer();
    const session = http2.connect(server.baseUrl);
    sessions.push(session);
    const goaways: number[] = [];
    session.on("goaway", (_code, lastStreamID) => goaways.push(lastStreamID));
    session.on("error", () => {});
    expect((await healthCheck(session)).grpcStatus).toBe("0");

    // Written now, read by the server only after its drain began (its GOAWAY queued, not yet sent).
    const crossing = Array.from({ length: 40 }, () => healthCheck(session));
    const closing = server.running.close(5_000);
    const outcomes = await Promise.all(crossing);
    await closing;

    expect(outcomes.filter((outcome) => outcome.grpcStatus !== "0" || outcome.error !== undefined)).toEqual([]);
    // The first GOAWAY refuses nothing (the client, having its answers, may leave before the second).
    expect(goaways[0]).toBe(MAX_STREAM_ID);
  });
});
