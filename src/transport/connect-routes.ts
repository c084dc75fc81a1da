// The pipeline's RPCs as connect-node routes: Connect (JSON and binary, HTTP/1.1 and HTTP/2),
// gRPC-Web, and the gRPC requests that the fast path leaves to connect-node (+json). Each route only
// turns the HandlerContext into a RequestMeta, calls the pipeline and turns its result back, so
// every protocol shares the pipeline's caller policy, error mapping and log line.

import type { DescMethodUnary } from "@bufbuild/protobuf";
import { ConnectError, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import type { RequestMeta, RpcPipeline } from "../api/rpc.js";
import { errorInfoOf } from "../api/status.js";
import { PEER_SPIFFE_ID_KEY } from "./tls.js";

export function routePipeline(router: ConnectRouter, pipeline: RpcPipeline): void {
  for (const registered of pipeline.registered()) {
    // RpcPipeline.register refuses every method that is not unary.
    const method = registered.method as DescMethodUnary;
    router.rpc(method, async (request, context) => {
      const result = await pipeline.invoke(registered, request, new HandlerContextMeta(context));
      context.responseHeader.set("x-request-id", result.requestId);
      if (result.ok) return result.response;
      const { status } = result;
      throw new ConnectError(status.message, status.code, undefined, [
        { desc: ErrorInfoSchema, value: errorInfoOf(status) },
      ]);
    });
  }
}

class HandlerContextMeta implements RequestMeta {
  readonly deadline: number | undefined;
  readonly protocol: string;

  constructor(private readonly context: HandlerContext) {
    const timeoutMs = context.timeoutMs();
    this.deadline = timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
    this.protocol = context.protocolName;
  }

  header(name: string): string | undefined {
    return this.context.requestHeader.get(name) ?? undefined;
  }

  peerSpiffeId(): string | undefined {
    return this.context.values.get(PEER_SPIFFE_ID_KEY);
  }
}
