// Prometheus metrics, served on a separate admin port so that scraping needs no RPC credentials
// and never competes with RPC traffic for the service port.

import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import type { RpcLabels, RpcObserver } from "./api/rpc.js";
import { codeName } from "./api/rpc.js";
import type { ReloadObserver } from "./reload.js";

export interface DatabaseGauges {
  /** Connections open to the database, idle ones, and queries waiting for one. */
  poolStats(): { total: number; idle: number; waiting: number; exhausted: number };
}

export class Metrics implements RpcObserver, ReloadObserver {
  readonly registry = new Registry();
  private readonly calls: Counter<"service" | "method" | "code">;
  private readonly reloadSuccess: Gauge<"source">;
  private readonly reloadFailures: Counter<"source">;
  private readonly latency: Histogram<"service" | "method">;
  // prom-client resolves labels by building a key string; RPCs are few, so resolve each once.
  private readonly callChildren = new Map<string, { inc(): void }>();
  private readonly latencyChildren = new Map<string, { observe(value: number): void }>();

  constructor(database: DatabaseGauges | undefined) {
    collectDefaultMetrics({ register: this.registry });
    this.calls = new Counter({
      name: "connections_rpc_total",
      help: "RPCs handled, by service, method and gRPC code.",
      labelNames: ["service", "method", "code"],
      registers: [this.registry],
    });
    this.latency = new Histogram({
      name: "connections_rpc_duration_seconds",
      help: "Time from a decoded request to its result, by service and method.",
      labelNames: ["service", "method"],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [this.registry],
    });
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
    if (database !== undefined) {
      for (const [field, help] of [
        ["total", "Database connections open."],
        ["idle", "Database connections idle."],
        ["waiting", "Queries waiting for a database connection."],
      ] as const) {
        new Gauge({
          name: `connections_db_pool_${field}`,
          help,
          registers: [this.registry],
          collect() {
            this.set(database.poolStats()[field]);
          },
        });
      }
      new Counter({
        name: "connections_db_pool_exhausted_total",
        help: "Calls refused because every database connection stayed busy (pool exhausted, not the database down).",
        registers: [this.registry],
        collect() {
          this.reset();
          this.inc(database.poolStats().exhausted);
        },
      });
    }
  }

  /** connections_watchers: the WatchConnectionEvents streams open on this replica. */
  countWatchers(count: () => number): void {
    new Gauge({
      name: "connections_watchers",
      help: "WatchConnectionEvents streams open on this replica.",
      registers: [this.registry],
      collect() {
        this.set(count());
      },
    });
  }

  /** `labels` come from the registered methods, or are "unknown": the label sets stay bounded. */
  observe(labels: RpcLabels, code: number, seconds: number): void {
    const key = `${labels.path}|${code}`;
    let calls = this.callChildren.get(key);
    if (calls === undefined) {
      calls = this.calls.labels(labels.service, labels.method, codeName(code));
      this.callChildren.set(key, calls);
    }
    calls.inc();
    let latency = this.latencyChildren.get(labels.path);
    if (latency === undefined) {
      latency = this.latency.labels(labels.service, labels.method);
      this.latencyChildren.set(labels.path, latency);
    }
    latency.observe(seconds);
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
