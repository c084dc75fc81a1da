// Prometheus metrics, served on a separate admin port so that scraping needs no RPC credentials
// and never competes with RPC traffic for the service port.

import { readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Counter, collectDefaultMetrics, Gauge, type Metric, Registry } from "prom-client";
import type { AdmissionController, AdmissionRefusal, AdmissionSnapshot, WaitOutcome } from "../api/rpc/admission.js";
import { codeName } from "../api/rpc/pipeline.js";
import type { AdmissionObserver, RpcLabels, RpcObserver } from "../api/rpc/types.js";
import type { FeedStats } from "../app/feed.js";
import type { ReloadObserver } from "../config/reload.js";
import type { CheckCacheStats } from "../store/store.js";
import { PORT_REFUSAL_REASONS, type PortObserver, type PortRefusalReason } from "../transport/refusals.js";

export interface DatabaseGauges {
  /** Connections open to the database, idle ones, and queries waiting for one. */
  poolStats(): { total: number; idle: number; waiting: number; exhausted: number };
  /** The CheckConnection cache's counters, where there is one. */
  checkCacheStats(): CheckCacheStats | undefined;
}

/** A counter whose value is read from `read()` at each scrape (the figure is kept elsewhere). */
function scrapedCounter(registry: Registry, name: string, help: string, read: () => number): void {
  new Counter({
    name,
    help,
    registers: [registry],
    collect() {
      this.reset();
      this.inc(read());
    },
  });
}

/** A gauge whose value is read from `read()` at each scrape. */
function scrapedGauge(registry: Registry, name: string, help: string, read: () => number): void {
  new Gauge({
    name,
    help,
    registers: [registry],
    collect() {
      this.set(read());
    },
  });
}

/** This package's version: src/observability (run with tsx) or dist/src/observability (built). */
function packageVersion(): string {
  for (const path of ["../../package.json", "../../../package.json"]) {
    try {
      const manifest = JSON.parse(readFileSync(new URL(path, import.meta.url), "utf8")) as {
        name?: string;
        version?: string;
      };
      if (manifest.name === "connections" && manifest.version !== undefined) return manifest.version;
    } catch {
      // Not at this level: try the next one.
    }
  }
  return "unknown";
}

/** Latency buckets in seconds, for connections_rpc_duration_seconds. */
const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/** What one method has seen: calls by gRPC code, and its latency histogram. */
interface MethodFigures {
  readonly labels: { readonly service: string; readonly method: string };
  readonly calls: Map<number, number>;
  /** Per bucket (not cumulative), with +Inf last. */
  readonly buckets: Float64Array;
  sum: number;
  count: number;
}

interface MetricValue {
  readonly metricName?: string;
  readonly labels: Readonly<Record<string, string | number>>;
  readonly value: number;
}

/**
 * connections_rpc_total and connections_rpc_duration_seconds. Every RPC adds to plain numbers
 * kept per method (prom-client's own counters and histograms resolve their labels through a
 * hashed key object on every call, a measurable part of a cached check); the registry turns them
 * into series when it is scraped.
 */
class RpcMetrics {
  private readonly byMethod = new Map<string, MethodFigures>();

  constructor(registry: Registry) {
    const register = (name: string, help: string, type: string, values: (figures: MethodFigures) => MetricValue[]) => {
      const get = async () => ({
        name,
        help,
        type,
        aggregator: "sum",
        values: [...this.byMethod.values()].flatMap(values),
      });
      registry.registerMetric({ name, help, type, aggregator: "sum", get, reset: () => {} } as unknown as Metric);
    };
    register("connections_rpc_total", "RPCs handled, by service, method and gRPC code.", "counter", (figures) =>
      [...figures.calls].map(([code, calls]) => ({
        labels: { ...figures.labels, code: codeName(code) },
        value: calls,
      })),
    );
    register(
      "connections_rpc_duration_seconds",
      "Time from a decoded request to its result, by service and method.",
      "histogram",
      histogramValues,
    );
  }

  observe(rpc: RpcLabels, code: number, seconds: number): void {
    let figures = this.byMethod.get(rpc.path);
    if (figures === undefined) {
      figures = {
        labels: { service: rpc.service, method: rpc.method },
        calls: new Map(),
        buckets: new Float64Array(LATENCY_BUCKETS.length + 1),
        sum: 0,
        count: 0,
      };
      this.byMethod.set(rpc.path, figures);
    }
    figures.calls.set(code, (figures.calls.get(code) ?? 0) + 1);
    let bucket = 0;
    while (bucket < LATENCY_BUCKETS.length && seconds > (LATENCY_BUCKETS[bucket] as number)) bucket++;
    figures.buckets[bucket] = (figures.buckets[bucket] as number) + 1;
    figures.sum += seconds;
    figures.count++;
  }
}

function histogramValues(figures: MethodFigures): MetricValue[] {
  const values: MetricValue[] = [];
  let cumulative = 0;
  for (let bucket = 0; bucket <= LATENCY_BUCKETS.length; bucket++) {
    cumulative += figures.buckets[bucket] as number;
    values.push({
      metricName: "connections_rpc_duration_seconds_bucket",
      labels: { le: LATENCY_BUCKETS[bucket] ?? "+Inf", ...figures.labels },
      value: cumulative,
    });
  }
  values.push({ metricName: "connections_rpc_duration_seconds_sum", labels: figures.labels, value: figures.sum });
  values.push({ metricName: "connections_rpc_duration_seconds_count", labels: figures.labels, value: figures.count });
  return values;
}

const WAIT_OUTCOMES: readonly WaitOutcome[] = ["admitted", "expired", "cancelled"];

export class Metrics implements RpcObserver, ReloadObserver, AdmissionObserver, PortObserver {
  readonly registry = new Registry();
  /** Refusals at the port by reason: plain numbers, read when scraped (a flood of bad requests refuses many a second). */
  private readonly portRefusals = new Map<PortRefusalReason, number>(PORT_REFUSAL_REASONS.map((reason) => [reason, 0]));
  /** Admission's refusals by caller, then reason: plain numbers, read when scraped (a storm refuses many a second). */
  private readonly admissionRefusals = new Map<string, Map<AdmissionRefusal, number>>();
  private readonly readsHeldByCaller = new Map<string, number>();
  private readonly rpcs: RpcMetrics;
  private readonly reloadSuccess: Gauge<"source">;
  private readonly reloadFailures: Counter<"source">;
  private readonly idempotencyReplays: Counter<"method">;
  private readonly idempotencyPruned: Counter;

  constructor(database: DatabaseGauges | undefined) {
    collectDefaultMetrics({ register: this.registry });
    this.rpcs = new RpcMetrics(this.registry);
    this.reloadSuccess = new Gauge({
      name: "connections_config_reload_last_success_timestamp_seconds",
      help: "When the callers file or TLS credentials were last read successfully (at start or on reload), by source.",
      labelNames: ["source"],
      registers: [this.registry],
    });
    this.reloadFailures = new Counter({
      name: "connections_config_reload_failures_total",
      help: "Reloads refused because a file did not read, parse or validate (the previous one stayed in force), by source.",
      labelNames: ["source"],
      registers: [this.registry],
    });
    new Gauge({
      name: "connections_build_info",
      help: "Always 1; the labels say which release and Node.js version this replica runs.",
      labelNames: ["version", "nodejs"],
      registers: [this.registry],
    })
      .labels(packageVersion(), process.version)
      .set(1);
    this.countsCounter(
      "connections_port_reads_held_total",
      "Turns of the event loop in which a caller's connections stopped reading because its calls read in that turn reached its share (admission control on; docs/API.md).",
      "caller",
      this.readsHeldByCaller,
    );
    this.countsCounter(
      "connections_port_refusals_total",
      "Requests and connections the port turned away before the pipeline ran, by reason (docs/operations.md).",
      "reason",
      this.portRefusals,
    );
    this.idempotencyReplays = new Counter({
      name: "connections_idempotency_replays_total",
      help: "Writes answered from the record of an earlier call with the same request_id (retries), by method.",
      labelNames: ["method"],
      registers: [this.registry],
    });
    this.idempotencyPruned = new Counter({
      name: "connections_idempotency_records_pruned_total",
      help: "Idempotency records deleted because they outlived IDEMPOTENCY_RETENTION.",
      registers: [this.registry],
    });
    if (database !== undefined) {
      const registry = this.registry;
      for (const [field, name, help] of [
        ["total", "connections_db_pool_connections", "Database connections open."],
        ["idle", "connections_db_pool_idle_connections", "Database connections open and idle."],
        ["waiting", "connections_db_pool_waiting_queries", "Queries waiting for a database connection."],
      ] as const) {
        scrapedGauge(registry, name, help, () => database.poolStats()[field]);
      }
      scrapedCounter(
        registry,
        "connections_db_pool_exhausted_total",
        "Calls refused because every database connection stayed busy (pool exhausted, not the database down).",
        () => database.poolStats().exhausted,
      );
      // Only where checks are cached (SQLite): PostgreSQL reads every check from the database.
      if (database.checkCacheStats() !== undefined) {
        const cache = () => database.checkCacheStats() ?? { hits: 0, misses: 0, evictions: 0, entries: 0 };
        for (const [field, name, help] of [
          [
            "hits",
            "connections_check_cache_hits_total",
            "Checks and GetConnection reads answered from the check cache.",
          ],
          [
            "misses",
            "connections_check_cache_misses_total",
            "Checks and GetConnection reads that read the database (not in the cache).",
          ],
          [
            "evictions",
            "connections_check_cache_evictions_total",
            "Connections that left the check cache to make room.",
          ],
        ] as const) {
          scrapedCounter(registry, name, help, () => cache()[field]);
        }
        scrapedGauge(
          registry,
          "connections_check_cache_entries",
          "Connections in the check cache.",
          () => cache().entries,
        );
      }
    }
  }

  /** The change feed's figures: events read, deliveries to watchers, poll fallbacks, lag. */
  observeFeed(feed: { stats(): FeedStats }): void {
    const registry = this.registry;
    scrapedCounter(
      registry,
      "connections_feed_events_total",
      "Events the change feed read.",
      () => feed.stats().events,
    );
    scrapedCounter(
      registry,
      "connections_feed_deliveries_total",
      "Events queued for WatchConnectionEvents streams (one event to three streams counts three).",
      () => feed.stats().deliveries,
    );
    scrapedCounter(
      registry,
      "connections_feed_poll_fallbacks_total",
      "Periodic polls that found events no notification had announced (a lost NOTIFY, or a feed that only polls).",
      () => feed.stats().pollFallbacks,
    );
    scrapedGauge(
      registry,
      "connections_feed_lag_seconds",
      "Seconds from the newest event's creation to the change feed reading it, at its last read.",
      () => feed.stats().lagSeconds,
    );
  }

  /** connections_watchers: the WatchConnectionEvents streams open on this replica. */
  countWatchers(count: () => number): void {
    scrapedGauge(this.registry, "connections_watchers", "WatchConnectionEvents streams open on this replica.", count);
  }

  /** connections_admission_*: the adaptive limit, the calls in flight by caller, and the refusals. */
  watchAdmission(controller: AdmissionController): void {
    const refusals = this.admissionRefusals;
    new Gauge({
      name: "connections_admission_limit",
      help: "Unary calls that admission control lets be at work at once now (adaptive, at most ADMISSION_MAX_IN_FLIGHT).",
      registers: [this.registry],
      collect() {
        this.set(controller.limit);
      },
    });
    /** A gauge by caller, read from the controller's snapshot when scraped. */
    const byCaller = (
      name: string,
      help: string,
      counts: (snapshot: AdmissionSnapshot) => ReadonlyMap<string, number>,
    ) =>
      new Gauge({
        name,
        help,
        labelNames: ["caller"],
        registers: [this.registry],
        collect() {
          this.reset();
          for (const [caller, count] of counts(controller.snapshot())) this.labels(caller).set(count);
        },
      });
    byCaller("connections_admission_in_flight", "Unary calls at work now, by caller.", (now) => now.inFlightByCaller);
    byCaller(
      "connections_admission_waiting",
      "Unary calls waiting for room now (their bodies not read yet), by caller.",
      (now) => now.waitingByCaller,
    );
    new Counter({
      name: "connections_admission_waits_total",
      help: "Unary calls that waited for room, by caller and how the wait ended (admitted; expired: the call's deadline came first; cancelled: the client went away).",
      labelNames: ["caller", "outcome"],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const [caller, counts] of controller.snapshot().waitsByCaller) {
          for (const outcome of WAIT_OUTCOMES) this.labels(caller, outcome).inc(counts[outcome]);
        }
      },
    });
    new Counter({
      name: "connections_admission_wait_seconds_total",
      help: 'Seconds that the calls admitted after a wait waited in all, by caller (over connections_admission_waits_total{outcome="admitted"}: the mean wait).',
      labelNames: ["caller"],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const [caller, counts] of controller.snapshot().waitsByCaller)
          this.labels(caller).inc(counts.admittedSeconds);
      },
    });
    new Counter({
      name: "connections_admission_refused_total",
      help: "Calls refused with RESOURCE_EXHAUSTED OVERLOADED before any work, by caller and reason: no room, and the caller's queue of waiting calls was full (limit: the replica was at its limit; share: the caller was over its fair share).",
      labelNames: ["caller", "reason"],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const [caller, byReason] of refusals) {
          for (const [reason, count] of byReason) this.labels(caller, reason).inc(count);
        }
      },
    });
  }

  admissionRefused(caller: string, reason: AdmissionRefusal): void {
    let byReason = this.admissionRefusals.get(caller);
    if (byReason === undefined) {
      byReason = new Map();
      this.admissionRefusals.set(caller, byReason);
    }
    byReason.set(reason, (byReason.get(reason) ?? 0) + 1);
  }

  /** A counter of one label whose values are the plain counts in `counts`, read when scraped. */
  private countsCounter(name: string, help: string, label: string, counts: ReadonlyMap<string, number>): void {
    new Counter({
      name,
      help,
      labelNames: [label],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const [value, count] of counts) this.labels(value).inc(count);
      },
    });
  }

  readsHeld(caller: string): void {
    this.readsHeldByCaller.set(caller, (this.readsHeldByCaller.get(caller) ?? 0) + 1);
  }

  portRefused(reason: PortRefusalReason): void {
    this.portRefusals.set(reason, (this.portRefusals.get(reason) ?? 0) + 1);
  }

  /** A write answered by replaying its first call's answer. */
  countIdempotencyReplay(method: string): void {
    this.idempotencyReplays.labels(method).inc();
  }

  countIdempotencyPruned(count: number): void {
    this.idempotencyPruned.inc(count);
  }

  /** `labels` come from the registered methods, or are "unknown": the label sets stay bounded. */
  observe(labels: RpcLabels, code: number, seconds: number): void {
    this.rpcs.observe(labels, code, seconds);
  }

  reloaded(source: string, ok: boolean, at: Date): void {
    // inc(0) makes the failure series exist (at 0) from the first success on.
    if (ok) this.reloadSuccess.labels(source).set(at.getTime() / 1000);
    this.reloadFailures.labels(source).inc(ok ? 0 : 1);
  }
}

export interface AdminServer {
  readonly port: number;
  close(): Promise<void>;
}

/** GET /metrics in the Prometheus text format; nothing else. */
export async function startAdminServer(registry: Registry, host: string, port: number): Promise<AdminServer> {
  const server: Server = createServer((request, response) => {
    if (request.method !== "GET" || request.url?.split("?")[0] !== "/metrics") {
      response.writeHead(404, { "content-type": "text/plain" }).end("not found; try GET /metrics\n");
      return;
    }
    registry.metrics().then(
      (text) => response.writeHead(200, { "content-type": registry.contentType }).end(text),
      () => response.writeHead(500, { "content-type": "text/plain" }).end("metrics unavailable\n"),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
