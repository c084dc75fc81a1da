// grpc.health.v1.Health (https://github.com/grpc/grpc/blob/master/doc/health-checking.md), without
// credentials and outside the pipeline, so that load balancers and orchestrators can always ask.
//
// "" (the whole server) and the pipeline's services serve only while readiness() answers true (the
// database answers); health and reflection serve whenever the process does. Everything turns
// NOT_SERVING for good once shutdown begins; Watch streams say so and stay open until the drain
// ends them, so that a client checking health holds that answer instead of asking again.

import type { ConnectRouter } from "@connectrpc/connect";
import type { Logger } from "pino";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import { ServiceError } from "../app/errors.js";
import { serviceFailure } from "./refusals.js";

export { ServingStatus };

export interface HealthControllerOptions {
  /** True when the database answers. */
  readonly readiness: () => Promise<boolean>;
  /** Services that serve only while readiness() is true; "" should be among them. */
  readonly servicesNeedingReadiness: readonly string[];
  /** Services that serve until shutdown, whatever readiness() says. */
  readonly alwaysServingServices: readonly string[];
  readonly logger: Logger;
  readonly pollIntervalMs?: number;
  /** A readiness() that has not answered by then counts as false. */
  readonly readinessTimeoutMs?: number;
  /** Watch streams at once; beyond it Watch fails with RESOURCE_EXHAUSTED. */
  readonly maxWatchers: number;
}

export class HealthController {
  private readonly servicesNeedingReadiness: ReadonlySet<string>;
  private readonly alwaysServingServices: ReadonlySet<string>;
  private readonly pollIntervalMs: number;
  private readonly readinessTimeoutMs: number;
  private ready: boolean | undefined;
  private shuttingDown = false;
  private watchesEnded = false;
  private checkedAt = 0;
  private runningCheck: Promise<void> | undefined;
  private pollTimer: NodeJS.Timeout | undefined;
  /** One wake-up function per Watch stream, removed when the stream ends. */
  private readonly watchers = new Set<() => void>();

  constructor(private readonly options: HealthControllerOptions) {
    this.servicesNeedingReadiness = new Set(options.servicesNeedingReadiness);
    this.alwaysServingServices = new Set(options.alwaysServingServices);
    this.pollIntervalMs = options.pollIntervalMs ?? 1_000;
    this.readinessTimeoutMs = options.readinessTimeoutMs ?? 1_000;
  }

  /** Runs the first readiness check, then one every poll interval until shutdown. */
  async start(): Promise<void> {
    await this.refresh();
    this.schedulePoll();
  }

  /** The status of a service, or undefined for a service that this server does not have. */
  status(service: string): ServingStatus | undefined {
    if (this.servicesNeedingReadiness.has(service)) {
      return this.ready === true && !this.shuttingDown ? ServingStatus.SERVING : ServingStatus.NOT_SERVING;
    }
    if (this.alwaysServingServices.has(service)) {
      return this.shuttingDown ? ServingStatus.NOT_SERVING : ServingStatus.SERVING;
    }
    return undefined;
  }

  statuses(): Map<string, ServingStatus> {
    const statuses = new Map<string, ServingStatus>();
    for (const service of [...this.servicesNeedingReadiness, ...this.alwaysServingServices]) {
      statuses.set(service, this.status(service) ?? ServingStatus.SERVICE_UNKNOWN);
    }
    return statuses;
  }

  /** Asks readiness() now if the last answer is older than two poll intervals (a stuck poll). */
  async refreshIfStale(): Promise<void> {
    if (!this.shuttingDown && Date.now() - this.checkedAt > 2 * this.pollIntervalMs) await this.refresh();
  }

  /**
   * Reports NOT_SERVING for every service from now on and stops polling; Watch streams send that
   * and stay open until endWatches(). The server's close() calls this first.
   */
  shutDown(): void {
    if (this.shuttingDown) return;
    this.shuttingDown = true;
    clearTimeout(this.pollTimer);
    this.notifyChange();
  }

  /** Ends every Watch stream (once shutdown has begun), so that the drain does not wait for them. */
  endWatches(): void {
    this.shutDown();
    this.watchesEnded = true;
    this.notifyChange();
  }

  /**
   * The service's status now and after every change; ends at shutdown or when `signal` aborts.
   * Each stream holds one entry in `watchers` and nothing else, and gives it back when it ends.
   */
  async *watch(service: string, signal: AbortSignal): AsyncGenerator<ServingStatus> {
    if (this.watchers.size >= this.options.maxWatchers) {
      throw new ServiceError(
        "TOO_MANY_WATCHERS",
        `this replica serves at most ${this.options.maxWatchers} health Watch streams; retry later or use Check`,
      );
    }
    let changed = true;
    let wake: (() => void) | undefined;
    const watcher = () => {
      changed = true;
      wake?.();
      wake = undefined;
    };
    this.watchers.add(watcher);
    signal.addEventListener("abort", watcher);
    try {
      let last: ServingStatus | undefined;
      while (!signal.aborted) {
        changed = false;
        const current = this.status(service) ?? ServingStatus.SERVICE_UNKNOWN;
        if (current !== last) {
          last = current;
          yield current;
        }
        if (this.watchesEnded) return;
        if (!changed) {
          await new Promise<void>((resolve) => {
            wake = resolve;
          });
        }
      }
    } finally {
      this.watchers.delete(watcher);
      signal.removeEventListener("abort", watcher);
    }
  }

  /** Watch streams open now. */
  get watcherCount(): number {
    return this.watchers.size;
  }

  private refresh(): Promise<void> {
    this.runningCheck ??= this.check().finally(() => {
      this.runningCheck = undefined;
    });
    return this.runningCheck;
  }

  private async check(): Promise<void> {
    const ready = await answerWithin(this.options.readiness, this.readinessTimeoutMs);
    this.checkedAt = Date.now();
    if (ready === this.ready || this.shuttingDown) return;
    if (ready) this.options.logger.info("ready: the database answers");
    else this.options.logger.warn("not ready: the database does not answer; health reports NOT_SERVING");
    this.ready = ready;
    this.notifyChange();
  }

  private schedulePoll(): void {
    if (this.shuttingDown) return;
    this.pollTimer = setTimeout(() => {
      void this.refresh().then(() => this.schedulePoll());
    }, this.pollIntervalMs);
    this.pollTimer.unref();
  }

  private notifyChange(): void {
    for (const watcher of this.watchers) watcher();
  }
}

async function answerWithin(readiness: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<false>((resolve) => {
    timer = setTimeout(resolve, timeoutMs, false);
  });
  try {
    return await Promise.race([Promise.resolve().then(readiness), timedOut]);
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
  }
}

export function routeHealth(router: ConnectRouter, health: HealthController): void {
  // Answers of a few bytes, never compressed and so never announced as gzip: C-core's own health
  // checking (a service config's healthCheckConfig) runs below its channel's decompression, and
  // grpcio 1.51 crashed on a Watch answer that named gzip.
  const uncompressed = { acceptCompression: [] };
  router.service(
    Health,
    {
      async check(request) {
        await health.refreshIfStale();
        const status = health.status(request.service);
        if (status === undefined) throw serviceFailure("UNKNOWN_SERVICE", `unknown service "${request.service}"`);
        return { status };
      },
      list() {
        const statuses: Record<string, { status: ServingStatus }> = {};
        for (const [service, status] of health.statuses()) statuses[service] = { status };
        return { statuses };
      },
      async *watch(request, context) {
        try {
          for await (const status of health.watch(request.service, context.signal)) yield { status };
        } catch (error) {
          if (error instanceof ServiceError) throw serviceFailure(error.reason, error.message);
          throw error;
        }
      },
    },
    uncompressed,
  );
}
