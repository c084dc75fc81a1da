// OpenTelemetry traces, exported over OTLP/HTTP (protobuf) when an OTLP endpoint is configured.
//
// The decision is made once, at start: without OTEL_EXPORTER_OTLP_ENDPOINT (or the traces-only
// variant) nothing here is loaded into the request path; the pipeline holds no tracer and the
// store is not wrapped. With it, the pipeline starts one server span per RPC, named after the
// method and continuing the caller's W3C traceparent; because every transport calls the pipeline,
// the gRPC fast path is traced like every other protocol. The store's calls are child spans,
// found through AsyncLocalStorage. Span attributes never carry a token.

import {
  type Attributes,
  type Context,
  context,
  type Span,
  SpanKind,
  SpanStatusCode,
  type TextMapGetter,
  type Tracer,
  trace,
} from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { detectResources, envDetector, resourceFromAttributes } from "@opentelemetry/resources";
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BasicTracerProvider,
  BatchSpanProcessor,
  type BufferConfig,
  ParentBasedSampler,
  type Sampler,
  TraceIdRatioBasedSampler,
} from "@opentelemetry/sdk-trace-base";
import type { Logger } from "pino";
import type { RequestMeta, RpcSpan, RpcTracing } from "../api/rpc/types.js";

const HEADER_GETTER: TextMapGetter<RequestMeta> = {
  get: (meta, key) => meta.header(key),
  keys: () => [],
};

/** Ends `span` with what the pipeline reports of the RPC (never a token). */
function rpcSpan(span: Span): RpcSpan {
  return {
    end(outcome) {
      const attributes: Attributes = {
        "rpc.grpc.status_code": outcome.code,
        "connections.request_id": outcome.requestId,
      };
      if (outcome.caller !== undefined) attributes["connections.caller"] = outcome.caller;
      if (outcome.organizationId !== "") attributes["connections.organization_id"] = outcome.organizationId;
      if (outcome.reason !== undefined) attributes["connections.error_reason"] = outcome.reason;
      span.setAttributes(attributes);
      // OpenTelemetry's gRPC conventions: server spans are errors for server faults only.
      if (SERVER_FAULTS.has(outcome.code)) span.setStatus({ code: SpanStatusCode.ERROR, message: outcome.reason });
      span.end();
    },
  };
}

export class Tracing implements RpcTracing {
  readonly #tracer: Tracer;
  readonly #propagator = new W3CTraceContextPropagator();

  private constructor(
    private readonly provider: BasicTracerProvider,
    private readonly contextManager: AsyncLocalStorageContextManager,
  ) {
    this.#tracer = provider.getTracer("connections");
  }

  /** Sets up the exporter from the standard OTEL_* variables. */
  static start(env: Readonly<Record<string, string | undefined>>, logger: Logger): Tracing {
    const contextManager = new AsyncLocalStorageContextManager().enable();
    context.setGlobalContextManager(contextManager);
    const resource = resourceFromAttributes({ "service.name": env.OTEL_SERVICE_NAME || "connections" }).merge(
      detectResources({ detectors: [envDetector] }),
    );
    // The exporter reads OTEL_EXPORTER_OTLP_HEADERS, timeouts and the like itself; the endpoint is
    // resolved here as the specification says, so that the configuration passed in decides it.
    const url =
      env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ||
      `${(env.OTEL_EXPORTER_OTLP_ENDPOINT ?? "").replace(/\/+$/, "")}/v1/traces`;
    const provider = new BasicTracerProvider({
      resource,
      sampler: samplerFromEnv(env, logger),
      spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter({ url }), batchConfig(env))],
    });
    // The URL only: credentials belong in OTEL_EXPORTER_OTLP_HEADERS, which is never logged.
    logger.info({ endpoint: new URL(url).origin }, "exporting traces over OTLP/HTTP");
    return new Tracing(provider, contextManager);
  }

  /**
   * Runs `work` as the RPC `path` ("/connections.v1.ConnectionService/CheckConnection") inside a
   * server span that continues the caller's trace; `work` ends the span with the outcome.
   */
  serve<T>(path: string, meta: RequestMeta, work: (span: RpcSpan) => Promise<T>): Promise<T> {
    const { span, parent } = this.#startServerSpan(path, meta);
    return context.with(trace.setSpan(parent, span), () => work(rpcSpan(span)));
  }

  /**
   * A server span for a stream at `path`, ended by the caller when the stream ends. Streams live
   * for hours and are pulled by the transport, so the span is not made active around them.
   */
  open(path: string, meta: RequestMeta): RpcSpan {
    return rpcSpan(this.#startServerSpan(path, meta).span);
  }

  #startServerSpan(path: string, meta: RequestMeta): { span: Span; parent: Context } {
    const parent = this.#propagator.extract(context.active(), meta, HEADER_GETTER);
    const name = path.slice(1);
    const slash = name.indexOf("/");
    const span = this.#tracer.startSpan(
      name,
      {
        kind: SpanKind.SERVER,
        attributes: {
          "rpc.system": "grpc",
          "rpc.service": name.slice(0, slash),
          "rpc.method": name.slice(slash + 1),
          "connections.protocol": meta.protocol,
        },
      },
      parent,
    );
    return { span, parent };
  }

  /** `target` with every method a child span of the active one: the store's database work. */
  traced<T extends object>(target: T, prefix: string, attributes: Attributes): T {
    const tracer = this.#tracer;
    return new Proxy(target, {
      get(object, property, receiver) {
        const value = Reflect.get(object, property, receiver);
        if (typeof value !== "function" || typeof property !== "string") return value;
        const name = `${prefix}.${property}`;
        return function traced(this: unknown, ...args: unknown[]) {
          const active: Context = context.active();
          // Work outside any RPC (migrations, health polls) is not traced on its own.
          if (trace.getSpan(active) === undefined) return value.apply(object, args);
          const span = tracer.startSpan(name, { kind: SpanKind.CLIENT, attributes }, active);
          try {
            const result = value.apply(object, args);
            if (result instanceof Promise) {
              return result.then(
                (resolved) => {
                  span.end();
                  return resolved;
                },
                (error: unknown) => {
                  failed(span, error);
                  throw error;
                },
              );
            }
            span.end();
            return result;
          } catch (error) {
            failed(span, error);
            throw error;
          }
        };
      },
    });
  }

  /** Exports what is buffered, then stops. */
  async shutdown(): Promise<void> {
    await this.provider.shutdown();
    this.contextManager.disable();
    context.disable();
  }
}

// UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
const SERVER_FAULTS: ReadonlySet<number> = new Set([2, 4, 12, 13, 14, 15]);

function failed(span: Span, error: unknown): void {
  // The error's class only: driver messages may quote data.
  span.setStatus({ code: SpanStatusCode.ERROR, message: (error as Error)?.name ?? "error" });
  span.end();
}

/** OTEL_BSP_* from the configuration passed in (the SDK would read only process.env). */
function batchConfig(env: Readonly<Record<string, string | undefined>>): BufferConfig {
  const config: { -readonly [K in keyof BufferConfig]: BufferConfig[K] } = {};
  const positive = (name: string) => {
    const value = Number(env[name]);
    return Number.isInteger(value) && value > 0 ? value : undefined;
  };
  config.scheduledDelayMillis = positive("OTEL_BSP_SCHEDULE_DELAY");
  config.exportTimeoutMillis = positive("OTEL_BSP_EXPORT_TIMEOUT");
  config.maxQueueSize = positive("OTEL_BSP_MAX_QUEUE_SIZE");
  config.maxExportBatchSize = positive("OTEL_BSP_MAX_EXPORT_BATCH_SIZE");
  return Object.fromEntries(Object.entries(config).filter(([, value]) => value !== undefined));
}

function samplerFromEnv(env: Readonly<Record<string, string | undefined>>, logger: Logger): Sampler {
  const argument = Number(env.OTEL_TRACES_SAMPLER_ARG ?? "1");
  const ratio = Number.isFinite(argument) && argument >= 0 && argument <= 1 ? argument : 1;
  switch (env.OTEL_TRACES_SAMPLER || "parentbased_always_on") {
    case "always_on":
      return new AlwaysOnSampler();
    case "always_off":
      return new AlwaysOffSampler();
    case "traceidratio":
      return new TraceIdRatioBasedSampler(ratio);
    case "parentbased_always_off":
      return new ParentBasedSampler({ root: new AlwaysOffSampler() });
    case "parentbased_traceidratio":
      return new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(ratio) });
    case "parentbased_always_on":
      return new ParentBasedSampler({ root: new AlwaysOnSampler() });
    default:
      logger.warn({ sampler: env.OTEL_TRACES_SAMPLER }, "unknown OTEL_TRACES_SAMPLER; sampling every trace");
      return new ParentBasedSampler({ root: new AlwaysOnSampler() });
  }
}
