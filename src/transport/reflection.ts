// gRPC server reflection (grpc.reflection.v1 and v1alpha), so that `buf curl` and grpcurl work
// without a schema. Built from the generated descriptors: DescFile.proto is the file's
// FileDescriptorProto. Needs no credentials and never goes through the pipeline, so its streams are
// bounded here: a cap on how many are open, and an idle deadline on each.

import {
  create,
  createRegistry,
  type DescFile,
  type DescService,
  fromBinary,
  type MessageInitShape,
  type Registry,
  toBinary,
} from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, type ConnectRouter } from "@connectrpc/connect";
import {
  ServerReflection,
  type ServerReflectionRequest,
  ServerReflectionRequestSchema,
  type ServerReflectionResponse,
  ServerReflectionResponseSchema,
} from "../../gen/grpc/reflection/v1/reflection_pb.js";
import {
  ServerReflectionRequestSchema as ServerReflectionRequestSchemaV1alpha,
  ServerReflectionResponseSchema as ServerReflectionResponseSchemaV1alpha,
  ServerReflection as ServerReflectionV1alpha,
} from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { serviceFailure } from "./refusals.js";

type MessageResponse = MessageInitShape<typeof ServerReflectionResponseSchema>["messageResponse"];

export const REFLECTION_SERVICES: readonly DescService[] = [ServerReflection, ServerReflectionV1alpha];

export class ReflectionIndex {
  /** Every file that a served service needs, by its proto name ("connections/v1/connection.proto"). */
  private readonly files = new Map<string, DescFile>();
  private readonly encodedFiles = new Map<DescFile, Uint8Array>();
  private readonly registry: Registry;
  private readonly serviceNames: readonly string[];

  /** `services`: what list_services reports; `extraFiles`: more files to describe, such as error details. */
  constructor(services: readonly DescService[], extraFiles: readonly DescFile[] = []) {
    for (const file of [...services.map((service) => service.file), ...extraFiles]) this.addWithDependencies(file);
    this.registry = createRegistry(...this.files.values());
    this.serviceNames = services.map((service) => service.typeName);
  }

  answer(request: ServerReflectionRequest): ServerReflectionResponse {
    return create(ServerReflectionResponseSchema, {
      validHost: request.host,
      originalRequest: request,
      messageResponse: this.respondTo(request.messageRequest),
    });
  }

  private respondTo(request: ServerReflectionRequest["messageRequest"]): MessageResponse {
    switch (request.case) {
      case "listServices":
        return {
          case: "listServicesResponse",
          value: { service: this.serviceNames.map((name) => ({ name })) },
        };
      case "fileByFilename":
        return this.fileWithDependencies(this.files.get(request.value), `file "${request.value}"`);
      case "fileContainingSymbol":
        return this.fileWithDependencies(this.fileDeclaring(request.value), `symbol "${request.value}"`);
      case "fileContainingExtension": {
        const { containingType, extensionNumber } = request.value;
        const extendee = this.registry.getMessage(containingType);
        const extension = extendee && this.registry.getExtensionFor(extendee, extensionNumber);
        return this.fileWithDependencies(extension?.file, `extension ${extensionNumber} of "${containingType}"`);
      }
      case "allExtensionNumbersOfType": {
        const extendee = this.registry.getMessage(request.value);
        if (extendee === undefined) return notFound(`message type "${request.value}"`);
        const numbers: number[] = [];
        for (const type of this.registry) {
          if (type.kind === "extension" && type.extendee.typeName === extendee.typeName) numbers.push(type.number);
        }
        return {
          case: "allExtensionNumbersResponse",
          value: { baseTypeName: extendee.typeName, extensionNumber: numbers },
        };
      }
      case undefined:
        return {
          case: "errorResponse",
          value: { errorCode: Code.InvalidArgument, errorMessage: "the request names no question" },
        };
    }
  }

  /** A message, enum, extension, service, or "<service>.<method>". */
  private fileDeclaring(symbol: string): DescFile | undefined {
    const type = this.registry.get(symbol);
    if (type !== undefined) return type.file;
    const lastDot = symbol.lastIndexOf(".");
    const service = this.registry.getService(symbol.slice(0, lastDot));
    const methodName = symbol.slice(lastDot + 1);
    return service?.methods.some((method) => method.name === methodName) ? service.file : undefined;
  }

  /** The file first (clients take the first one as the answer), then everything it imports. */
  private fileWithDependencies(file: DescFile | undefined, what: string): MessageResponse {
    if (file === undefined) return notFound(what);
    const files = new Set<DescFile>();
    const visit = (next: DescFile) => {
      if (files.has(next)) return;
      files.add(next);
      for (const dependency of next.dependencies) visit(dependency);
    };
    visit(file);
    return {
      case: "fileDescriptorResponse",
      value: { fileDescriptorProto: [...files].map((each) => this.encoded(each)) },
    };
  }

  private encoded(file: DescFile): Uint8Array {
    let bytes = this.encodedFiles.get(file);
    if (bytes === undefined) {
      bytes = toBinary(FileDescriptorProtoSchema, file.proto);
      this.encodedFiles.set(file, bytes);
    }
    return bytes;
  }

  private addWithDependencies(file: DescFile): void {
    if (this.files.has(file.proto.name)) return;
    this.files.set(file.proto.name, file);
    for (const dependency of file.dependencies) this.addWithDependencies(dependency);
  }
}

function notFound(what: string): MessageResponse {
  return { case: "errorResponse", value: { errorCode: Code.NotFound, errorMessage: `${what} not found` } };
}

/** What reflection streams may hold: they need no credentials, so anyone can open them. */
export interface ReflectionLimits {
  /** Streams at once per replica; beyond it RESOURCE_EXHAUSTED OVERLOADED. */
  readonly maxStreams: number;
  /** A stream that sends no request for this long ends with DEADLINE_EXCEEDED. */
  readonly idleTimeoutMs: number;
}

/** Counts the open reflection streams and ends the idle ones, like health Watch's cap. */
class ReflectionStreams {
  private open = 0;

  constructor(private readonly limits: ReflectionLimits) {}

  async *serve<Q, A>(requests: AsyncIterable<Q>, answer: (request: Q) => A): AsyncGenerator<A> {
    if (this.open >= this.limits.maxStreams) {
      throw serviceFailure(
        "OVERLOADED",
        `this replica serves at most ${this.limits.maxStreams} reflection streams at once; retry later`,
      );
    }
    this.open++;
    const iterator = requests[Symbol.asyncIterator]();
    let timer: NodeJS.Timeout | undefined;
    const idle = () =>
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () =>
            reject(
              serviceFailure(
                "DEADLINE_EXCEEDED",
                `no reflection request arrived within ${this.limits.idleTimeoutMs} ms; open a new stream to ask again`,
              ),
            ),
          this.limits.idleTimeoutMs,
        );
      });
    try {
      for (;;) {
        const next = await Promise.race([iterator.next(), idle()]);
        clearTimeout(timer);
        if (next.done === true) return;
        yield answer(next.value);
      }
    } finally {
      clearTimeout(timer);
      this.open--;
      void iterator.return?.()?.catch(() => {});
    }
  }
}

export function routeReflection(router: ConnectRouter, index: ReflectionIndex, limits: ReflectionLimits): void {
  const streams = new ReflectionStreams(limits);
  router.service(ServerReflection, {
    serverReflectionInfo: (requests) => streams.serve(requests, (request) => index.answer(request)),
  });
  // v1alpha has the same messages under another package: the same wire bytes.
  router.service(ServerReflectionV1alpha, {
    serverReflectionInfo: (requests) =>
      streams.serve(requests, (request) => {
        const asV1 = fromBinary(ServerReflectionRequestSchema, toBinary(ServerReflectionRequestSchemaV1alpha, request));
        const answer = toBinary(ServerReflectionResponseSchema, index.answer(asV1));
        return fromBinary(ServerReflectionResponseSchemaV1alpha, answer);
      }),
  });
}
