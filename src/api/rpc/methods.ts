// The method table's entries: each RPC of a generated service with its row of the caller table
// (src/api/policy.ts) and, for unary RPCs, the choice of codec (the hand-written ones on the check
// hot path, protobuf-es elsewhere). A service whose RPC has no policy, or is of a kind the pipeline
// does not run, fails at startup.

import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import { binaryDecoderFor, binaryEncoderFor } from "../binary-codecs.js";
import { CALLER_TABLE } from "../policy.js";
import type { MethodBase, RegisteredMethod, ServiceHandlers, StreamingMethod, UnaryMethod } from "./types.js";

/** Every RPC of `service` bound to its handler, caller policy and codecs. */
export function methodsOf<T extends GenServiceMethods>(
  service: GenService<T>,
  handlers: ServiceHandlers<T>,
): RegisteredMethod[] {
  return service.methods.map((method): RegisteredMethod => {
    const key = `${service.typeName}/${method.name}`;
    const policy = CALLER_TABLE[key];
    if (policy === undefined) throw new Error(`no caller policy for ${key}`);
    const base: MethodBase = {
      path: `/${key}`,
      labels: { path: `/${key}`, service: service.typeName, method: method.name },
      method,
      callers: new Set(policy.callers),
      actsForOrganization: policy.actsForOrganization,
      actsForEveryOrganization: new Set(policy.actsForEveryOrganization),
    };
    const handler = handlers[method.localName as keyof T] as unknown;
    switch (method.methodKind) {
      case "unary":
        return {
          ...base,
          kind: "unary",
          handle: handler as UnaryMethod["handle"],
          decode: binaryDecoderFor(method.input),
          encode: binaryEncoderFor(method.output),
        };
      case "server_streaming":
        return { ...base, kind: "server_streaming", stream: handler as StreamingMethod["stream"] };
      default:
        throw new Error(`${key} is ${method.methodKind}: only unary and server-streaming RPCs are supported`);
    }
  });
}
