// The pipeline's RPCs as connect-node routes: Connect (JSON and binary, HTTP/1.1 and HTTP/2),
// gRPC-Web, and the gRPC requests that the fast path leaves to connect-node (+json, and every
// server-streaming RPC). Each route only turns the HandlerContext into a RequestMeta, calls the
// pipeline and turns its result back, so every protocol shares the pipeline's caller policy, error
// mapping and log line.

import type { DescMethodServerStreaming, DescMethodUnary } from "@bufbuild/protobuf";
import { type ConnectRouter, createContextKey, type HandlerContext } from "@connectrpc/connect";
import { type RpcPipeline, RpcStreamError } from "../api/rpc/pipeline.js";
import type { RequestMeta } from "../api/rpc/types.js";
import { ADMISSION_TICKET, REQUEST_DEADLINE } from "./connect-edge.js";
import { toConnectError } from "./refusals.js";
import { PEER_SPIFFE_ID_KEY } from "./tls.js";

/** Set per request by the server: resets the request's stream (HTTP/2) or connection (HTTP/1.1). */
export const ABANDON_REQUEST = createContextKey<(() => void) | undefined>(undefined, {
  description: "resets the request's stream or connection without a status",
});

/** Set per request by the server: aborts when its HTTP/2 connection reaches its maximum age. */
export const CONNECTION_AGING = createContextKey<AbortSignal | undefined>(undefined, {
  description: "aborts when the request's connection reaches its maximum age",
});

export function routePipeline(router: ConnectRouter, pipeline: RpcPipeline): void {
  for (const registered of pipeline.registered()) {
    if (registered.kind === "server_streaming") {
      router.rpc(registered.method as DescMethodServerStreaming, async function* (request, context) {
        const stream = pipeline.stream(registered, request, new HandlerContextMeta(context), {
          signal: context.signal,
          abandon: context.values.get(ABANDON_REQUEST),
          connectionAging: context.values.get(CONNECTION_AGING),
        });
        context.responseHeader.set("x-request-id", stream.requestId);
        try {
          yield* stream.responses;
        } catch (error) {
          if (error instanceof RpcStreamError) throw toConnectError(error.status);
          throw error;
        }
      });
      continue;
    }
    router.rpc(registered.method as DescMethodUnary, async (request, context) => {
      const meta = new HandlerContextMeta(context);
      const result = await pipeline.invoke(registered, request, meta, context.values.get(ADMISSION_TICKET));
      context.responseHeader.set("x-request-id", result.requestId);
      if (result.ok) return result.response;
      throw toConnectError(result.status);
    });
  }
}

class HandlerContextMeta implements RequestMeta {
  readonly deadline: number | undefined;
  readonly protocol: string;

  constructor(private readonly context: HandlerContext) {
    // The edge read the timeout header and counted it from the request's first byte.
    this.deadline = context.values.get(REQUEST_DEADLINE);
    this.protocol = context.protocolName;
  }

  onClientGone(listener: () => void): void {
    // connect-node aborts it when the client goes away (and at its own reading of the deadline).
    const { signal } = this.context;
    if (signal.aborted) listener();
    else signal.addEventListener("abort", listener, { once: true });
  }

  header(name: string): string | undefined {
    return this.context.requestHeader.get(name) ?? undefined;
  }

  peerSpiffeId(): string | undefined {
    return this.context.values.get(PEER_SPIFFE_ID_KEY);
  }
}
