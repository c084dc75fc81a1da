// The Call that the pipeline hands a handler. Its `signal` must be an accessor of a prototype that
// every call shares: an object literal with `get signal()` gave each call a hidden class of its
// own, made in V8's old generation, and through it every call's objects outlived young-generation
// collections until a full collection (docs/performance.md, "The Call's hidden class").

import { create } from "@bufbuild/protobuf";
import pino from "pino";
import { describe, expect, it } from "vitest";
import { ConnectionService, GetConnectionRequestSchema } from "../../gen/connections/v1/connection_service_pb.js";
import { OrganizationService } from "../../gen/connections/v1/organization_service_pb.js";
import { CallerAuthenticator } from "../../src/api/callers.js";
import { RpcPipeline } from "../../src/api/rpc/pipeline.js";
import type { Call, RequestMeta, UnaryMethod } from "../../src/api/rpc/types.js";
import { ServiceError } from "../../src/app/errors.js";
import type { Organizations } from "../../src/app/organizations.js";

const HEADERS: Record<string, string> = {
  authorization: "Bearer dev-api-gateway",
  "x-organization-id": "org_a",
  "x-actor": "user:usr_1",
};

/** A pipeline whose GetConnection keeps the Call it was given; `onClientGone` is the client's. */
function pipelineKeepingCalls(calls: Call[]): RpcPipeline {
  const pipeline = new RpcPipeline({
    authenticator: CallerAuthenticator.dev(),
    organizations: { isRegistered: async (id: string) => id === "org_a" } as unknown as Organizations,
    logger: pino({ level: "silent" }),
    maxDeadlineMs: 30_000,
  });
  const unused = async () => {
    throw new ServiceError("INTERNAL", "not used here");
  };
  pipeline.register(ConnectionService, {
    getConnection: async (request, call) => {
      calls.push(call);
      if (request.id === "cxn_cancelled")
        await new Promise((resolve) => call.signal.addEventListener("abort", resolve));
      return { connection: { id: request.id } };
    },
    createConnection: unused,
    listConnections: unused,
    activateConnection: unused,
    deactivateConnection: unused,
    reactivateConnection: unused,
    listConnectionEvents: unused,
    checkConnection: unused,
    updateConnection: unused,
    batchCheckConnection: unused,
    watchConnectionEvents: async function* () {},
  });
  pipeline.register(OrganizationService, {
    createOrganization: unused,
    getOrganization: unused,
  });
  return pipeline;
}

function meta(clientGone?: (listener: () => void) => void): RequestMeta {
  return {
    header: (name) => HEADERS[name],
    deadline: undefined,
    protocol: "grpc",
    onClientGone: clientGone ?? (() => {}),
  };
}

const GET = "/connections.v1.ConnectionService/GetConnection";

describe("the Call a handler gets", () => {
  it("carries the caller, the acting organization, the actor and the request id", async () => {
    const calls: Call[] = [];
    const pipeline = pipelineKeepingCalls(calls);
    const method = pipeline.lookup(GET) as UnaryMethod;
    const result = await pipeline.invoke(method, create(GetConnectionRequestSchema, { id: "cxn_1" }), meta());
    expect(result.ok).toBe(true);
    expect(calls).toHaveLength(1);
    expect(calls[0]).toMatchObject({ caller: "api-gateway", organizationId: "org_a", actor: "user:usr_1" });
    expect(calls[0]?.requestId).toBe(result.requestId);
  });

  it("has the same shape on every call, its signal an accessor they share", async () => {
    const calls: Call[] = [];
    const pipeline = pipelineKeepingCalls(calls);
    const method = pipeline.lookup(GET) as UnaryMethod;
    for (const id of ["cxn_1", "cxn_2"]) {
      await pipeline.invoke(method, create(GetConnectionRequestSchema, { id }), meta());
    }
    const [first, second] = calls as [Call, Call];
    expect(Object.getOwnPropertyDescriptor(first, "signal")).toBeUndefined();
    expect(Object.getPrototypeOf(first)).toBe(Object.getPrototypeOf(second));
    const accessor = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(first), "signal");
    expect(typeof accessor?.get).toBe("function");
    expect(Object.keys(first)).toEqual(Object.keys(second));
  });

  it("aborts its signal when the client goes away", async () => {
    const calls: Call[] = [];
    const pipeline = pipelineKeepingCalls(calls);
    const method = pipeline.lookup(GET) as UnaryMethod;
    let goAway: (() => void) | undefined;
    const answer = pipeline.invoke(
      method,
      create(GetConnectionRequestSchema, { id: "cxn_cancelled" }),
      meta((listener) => {
        goAway = listener;
      }),
    );
    await expect.poll(() => calls.length).toBe(1);
    expect(calls[0]?.signal.aborted).toBe(false);
    goAway?.();
    expect(calls[0]?.signal.aborted).toBe(true);
    expect(calls[0]?.signal.reason).toMatchObject({ reason: "CANCELLED" });
    const result = await answer;
    expect(result.ok).toBe(false);
  });
});
