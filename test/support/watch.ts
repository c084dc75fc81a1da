// A WatchConnectionEvents client for the tests, over two independent stacks: connect-node (gRPC
// protocol over HTTP/2, or the Connect protocol over HTTP/1.1) and @grpc/grpc-js. Messages are
// queued as they arrive; a test takes them in order and waits for the stream's end and status.

import http from "node:http";
import { create, fromBinary, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import type { ConnectionEvent } from "../../gen/connections/v1/connection_pb.js";
import {
  ConnectionService,
  type WatchConnectionEventsRequestSchema,
  type WatchConnectionEventsResponse,
  WatchConnectionEventsResponseSchema,
} from "../../gen/connections/v1/connection_service_pb.js";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { type Caller, Code, grpcMetadata, RpcError, requestHeaders, rpcErrorOf } from "./service.js";

export type WatchClientKind = "connect-grpc" | "connect-http1" | "grpc-js";
export const WATCH_CLIENT_KINDS: readonly WatchClientKind[] = ["connect-grpc", "connect-http1", "grpc-js"];

export type WatchRequest = MessageInitShape<typeof WatchConnectionEventsRequestSchema>;

export interface WatchOptions {
  readonly caller: Caller;
  readonly organizationId?: string;
  /** The client's deadline for the whole stream. */
  readonly timeoutMs?: number;
}

const WAIT_MS = 20_000;

/** One open stream: its messages in order, then its end (undefined = OK, else the RpcError). */
export class WatchStream {
  readonly #messages: WatchConnectionEventsResponse[] = [];
  #ended = false;
  #error: RpcError | undefined;
  #waiter: (() => void) | undefined;
  /** Cancels the call (set by the client stack). */
  cancel: () => void = () => {};

  push(message: WatchConnectionEventsResponse): void {
    this.#messages.push(message);
    this.#notify();
  }

  finish(error: RpcError | undefined): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#error = error;
    this.#notify();
  }

  /** The next message; throws the stream's error (or "ended") when it ends first. */
  async next(): Promise<WatchConnectionEventsResponse> {
    await this.#until(() => this.#messages.length > 0 || this.#ended, "a message");
    const message = this.#messages.shift();
    if (message !== undefined) return message;
    throw this.#error ?? new Error("the stream ended OK without another message");
  }

  /** Messages until `count` events have arrived (no more); returns them and the last cursor. */
  async events(count: number): Promise<{ events: ConnectionEvent[]; cursor: string }> {
    const events: ConnectionEvent[] = [];
    let cursor = "";
    while (events.length < count) {
      const message = await this.next();
      events.push(...message.events);
      cursor = message.cursor;
    }
    if (events.length > count) throw new Error(`expected ${count} events, got ${events.length}`);
    return { events, cursor };
  }

  /** Waits for the end: the error it ended with (after discarding messages), or undefined for OK. */
  async end(): Promise<RpcError | undefined> {
    await this.#until(() => this.#ended, "the end of the stream");
    return this.#error;
  }

  /** Messages received and not taken yet. */
  get pending(): number {
    return this.#messages.length;
  }

  async #until(condition: () => boolean, what: string): Promise<void> {
    const deadline = Date.now() + WAIT_MS;
    while (!condition()) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new Error(`timed out waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, remaining);
        this.#waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  #notify(): void {
    const waiter = this.#waiter;
    this.#waiter = undefined;
    waiter?.();
  }
}

function headersOf(options: WatchOptions): Record<string, string> {
  return requestHeaders({ caller: options.caller, organizationId: options.organizationId });
}

export interface WatchClient {
  watch(request: WatchRequest, options: WatchOptions): WatchStream;
  close(): void;
}

export function watchClient(kind: WatchClientKind, address: string): WatchClient {
  return kind === "grpc-js" ? new GrpcJsWatchClient(address) : new ConnectWatchClient(kind, `http://${address}`);
}

class ConnectWatchClient implements WatchClient {
  readonly #client;
  readonly #dispose: () => void;

  constructor(kind: "connect-grpc" | "connect-http1", baseUrl: string) {
    if (kind === "connect-grpc") {
      const sessionManager = new Http2SessionManager(baseUrl);
      this.#client = createClient(ConnectionService, createGrpcTransport({ baseUrl, sessionManager }));
      this.#dispose = () => sessionManager.abort();
    } else {
      const agent = new http.Agent({ keepAlive: true });
      this.#client = createClient(
        ConnectionService,
        createConnectTransport({ baseUrl, httpVersion: "1.1", nodeOptions: { agent } }),
      );
      this.#dispose = () => agent.destroy();
    }
  }

  watch(request: WatchRequest, options: WatchOptions): WatchStream {
    const stream = new WatchStream();
    const abort = new AbortController();
    stream.cancel = () => abort.abort();
    const responses = this.#client.watchConnectionEvents(request, {
      headers: headersOf(options),
      signal: abort.signal,
      ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
    });
    void (async () => {
      try {
        for await (const message of responses) stream.push(message);
        stream.finish(undefined);
      } catch (error) {
        const connectError = ConnectError.from(error);
        const info = connectError.findDetails(ErrorInfoSchema)[0];
        stream.finish(
          new RpcError(
            connectError.code,
            connectError.rawMessage,
            info?.reason ?? "",
            info?.domain ?? "",
            {
              ...info?.metadata,
            },
            {},
          ),
        );
      }
    })();
    return stream;
  }

  close(): void {
    this.#dispose();
  }
}

class GrpcJsWatchClient implements WatchClient {
  readonly #client: grpc.Client;

  constructor(address: string) {
    this.#client = new grpc.Client(address, grpc.credentials.createInsecure());
  }

  watch(request: WatchRequest, options: WatchOptions): WatchStream {
    const stream = new WatchStream();
    const metadata = grpcMetadata(headersOf(options));
    const method = ConnectionService.method.watchConnectionEvents;
    const call = this.#client.makeServerStreamRequest(
      `/${ConnectionService.typeName}/${method.name}`,
      (value: WatchRequest) => Buffer.from(toBinary(method.input, create(method.input, value))),
      (bytes: Buffer) => fromBinary(WatchConnectionEventsResponseSchema, bytes),
      request,
      metadata,
      options.timeoutMs === undefined ? {} : { deadline: Date.now() + options.timeoutMs },
    );
    stream.cancel = () => call.cancel();
    call.on("data", (message: WatchConnectionEventsResponse) => stream.push(message));
    call.on("error", () => {});
    call.on("status", (status: grpc.StatusObject) => {
      if (status.code === grpc.status.OK) {
        stream.finish(undefined);
        return;
      }
      stream.finish(rpcErrorOf(status));
    });
    return stream;
  }

  close(): void {
    this.#client.close();
  }
}

export { Code };
