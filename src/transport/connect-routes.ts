// The pipeline's RPCs as connect-node routes: Connect (JSON and binary, HTTP/1.1 and HTTP/2),
// gRPC-Web, and the gRPC requests that the fast path leaves to connect-node (+json). Each route only
// turns the HandlerContext into a RequestMeta, calls the pipeline and turns its result back, so
// every protocol shares the pipeline's caller policy, error mapping and log line.

import type { DescMethodUnary } from "@bufbuild/protobuf";
import type { ConnectRouter, HandlerContext } from "@connectrpc/connect";
import type { RequestMeta, RpcPipeline } from "../api/rpc.js";
import { REQUEST_DEADLINE } from "./connect-edge.js";
import { toConnectError } from "./refusals.js";
import { PEER_SPIFFE_ID_KEY } from "./tls.js";

export function routePipeline(router: ConnectRouter, pipeline: RpcPipeline): void {
  for (const registered of pipeline.registered()) {
    // RpcPipeline.register refuses every method that is not unary.
    const method = registered.method as DescMethodUnary;
    router.rpc(method, async (request, context) => {
      const result = await pipeline.invoke(registered, request, new HandlerContextMeta(context));
      context.responseHeader.set("x-request-id", result.requestId);
      if (result.ok) return result.response;
      throw toConnectError(result.status);
    });
  }
}

class HandlerContextMeta implements RequestMeta {
  readonly deadline: number | undefined;
  readonly protocol: string;
  /** connect-node aborts it when the client goes away (and at its own reading of the deadline). */
  readonly signal: AbortSignal;

  constructor(private readonly context: HandlerContext) {
    // The edge read the timeout header and counted it from the request's first byte.
    this.deadline = context.values.get(REQUEST_DEADLINE);
    this.protocol = context.protocolName;
    this.signal = context.signal;
  }

  header(name: string): string | undefined {
    return this.context.requestHeader.get(name) ?? undefined;
  }

  peerSpiffeId(): string | undefined {
    return this.context.values.get(PEER_SPIFFE_ID_KEY);
  }
}
