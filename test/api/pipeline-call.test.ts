// The Call that the pipeline hands a handler. Its `signal` must be an accessor of a prototype that
// every call shares: an object literal with `get signal()` gave each call a hidden class of its
// own, made in V8's old generation, and through it every call's objects outlived young-generation
// collections until a full collection (docs/performance.md, "The Call's hidden class").

import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { GetConnectionRequestSchema } from "../../gen/connections/v1/connection_service_pb.js";
import type { RpcPipeline } from "../../src/api/rpc/pipeline.js";
import type { Call, RequestMeta, RpcResult, UnaryMethod } from "../../src/api/rpc/types.js";
import { createTestPipeline, HOLD_ID, Stubs } from "../transport/harness.js";

const HEADERS: Record<string, string> = {
  authorization: "Bearer dev-api-gateway",
  "x-organization-id": "org_a",
  "x-actor": "user:usr_1",
};

function meta(clientGone: (listener: () => void) => void = () => {}): RequestMeta {
  return { header: (name) => HEADERS[name], deadline: undefined, protocol: "grpc", onClientGone: clientGone };
}

function getConnection(pipeline: RpcPipeline, id: string, requestMeta = meta()): Promise<RpcResult> {
  const method = pipeline.lookup("/connections.v1.ConnectionService/GetConnection") as UnaryMethod;
  return pipeline.invoke(method, create(GetConnectionRequestSchema, { id }), requestMeta);
}

/** A GetConnection held in its handler, the Call it got, and the way to make its client go away. */
async function heldCall(): Promise<{ stubs: Stubs; call: Call; goAway: () => void; answer: Promise<RpcResult> }> {
  const stubs = new Stubs();
  let clientGone: (() => void) | undefined;
  const answer = getConnection(
    createTestPipeline(stubs),
    HOLD_ID,
    meta((listener) => {
      clientGone = listener;
    }),
  );
  await expect.poll(() => stubs.held).toBe(1);
  return { stubs, call: stubs.lastCall as Call, goAway: () => clientGone?.(), answer };
}

describe("the Call a handler gets", () => {
  it("carries the caller, the acting organization, the actor and the request id", async () => {
    const stubs = new Stubs();
    const result = await getConnection(createTestPipeline(stubs), "cxn_1");
    expect(result.ok).toBe(true);
    expect(stubs.lastCall).toMatchObject({ caller: "api-gateway", organizationId: "org_a", actor: "user:usr_1" });
    expect(stubs.lastCall?.requestId).toBe(result.requestId);
  });

  it("has the same shape on every call, its signal an accessor they share", async () => {
    const stubs = new Stubs();
    const pipeline = createTestPipeline(stubs);
    const calls: Call[] = [];
    for (const id of ["cxn_1", "cxn_2"]) {
      await getConnection(pipeline, id);
      calls.push(stubs.lastCall as Call);
    }
    const [first, second] = calls as [Call, Call];
    expect(first).not.toBe(second);
    expect(Object.getOwnPropertyDescriptor(first, "signal")).toBeUndefined();
    expect(Object.getPrototypeOf(first)).toBe(Object.getPrototypeOf(second));
    const accessor = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(first), "signal");
    expect(typeof accessor?.get).toBe("function");
    expect(Object.keys(first)).toEqual(Object.keys(second));
  });

  it("aborts its signal when the client goes away", async () => {
    const { stubs, call, goAway, answer } = await heldCall();
    expect(call.signal.aborted).toBe(false);
    goAway();
    expect(call.signal.aborted).toBe(true);
    expect(call.signal.reason).toMatchObject({ reason: "CANCELLED" });
    const result = await answer;
    stubs.releaseHolds();
    expect(result.ok).toBe(false);
  });

  it("tells the listeners still added when it aborts, once, and none added after", async () => {
    const { stubs, call, goAway, answer } = await heldCall();
    const signal = call.signal;
    const told: string[] = [];
    const kept = () => told.push("kept");
    const removed = () => told.push("removed");
    signal.addEventListener("abort", kept);
    signal.addEventListener("abort", removed);
    signal.removeEventListener("abort", removed);
    expect(() => signal.throwIfAborted()).not.toThrow();
    goAway();
    goAway();
    signal.addEventListener("abort", () => told.push("late"));
    expect(told).toEqual(["kept"]);
    expect(() => signal.throwIfAborted()).toThrow(expect.objectContaining({ reason: "CANCELLED" }));
    await answer;
    stubs.releaseHolds();
  });
});
