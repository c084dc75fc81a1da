// What one client may hold of the port, and the clocks that enforce it. Every limit has a
// production default here; src/config.ts reads overrides from the environment, and
// docs/architecture.md ("The port") says what each one defends against.

import { UnderWay, type UnderWayEntry } from "../runtime/under-way.js";

export interface TransportLimits {
  /** A connection that has not said which protocol it speaks by then is dropped. */
  readonly firstBytesTimeoutMs: number;
  /** From a request's first byte until its whole body must have arrived. */
  readonly bodyReadTimeoutMs: number;
  /** HTTP/1.1: from a request's first byte until its headers are complete. */
  readonly http1HeadersTimeoutMs: number;
  /** HTTP/1.1: from a request's first byte until it is completely received. */
  readonly http1RequestTimeoutMs: number;
  /** HTTP/1.1: how long a keep-alive connection may wait for its next request. */
  readonly http1KeepAliveTimeoutMs: number;
  /** HTTP/2: a connection without a new stream for this long gets GOAWAY. */
  readonly http2IdleTimeoutMs: number;
  /** HTTP/2: a PING is sent this often; a peer that does not answer in the timeout is dropped. */
  readonly http2KeepaliveIntervalMs: number;
  readonly http2KeepaliveTimeoutMs: number;
  /** HTTP/2: after this age (±10%) a connection gets GOAWAY, so that clients rebalance across replicas. */
  readonly maxConnectionAgeMs: number;
  /** ...and after this grace, whatever still runs on it is cancelled. */
  readonly maxConnectionAgeGraceMs: number;
  /** HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS. */
  readonly http2MaxConcurrentStreams: number;
  /** SETTINGS_MAX_HEADER_LIST_SIZE on HTTP/2, and the largest request head on HTTP/1.1. */
  readonly maxHeaderListBytes: number;
  /** grpc.health.v1.Health/Watch streams per replica; beyond it RESOURCE_EXHAUSTED. */
  readonly maxHealthWatchers: number;
  /** Reflection streams per replica (they need no credentials); beyond it RESOURCE_EXHAUSTED. */
  readonly maxReflectionStreams: number;
  /** A reflection stream without a request for this long ends with DEADLINE_EXCEEDED. */
  readonly reflectionIdleTimeoutMs: number;
  /** HTTP/2 connections held at once; at the cap the one idle the longest gets GOAWAY. */
  readonly maxHttp2Connections: number;
}

export const DEFAULT_TRANSPORT_LIMITS: TransportLimits = {
  firstBytesTimeoutMs: 10_000,
  bodyReadTimeoutMs: 30_000,
  http1HeadersTimeoutMs: 10_000,
  http1RequestTimeoutMs: 60_000,
  http1KeepAliveTimeoutMs: 30_000,
  http2IdleTimeoutMs: 300_000,
  http2KeepaliveIntervalMs: 60_000,
  http2KeepaliveTimeoutMs: 20_000,
  maxConnectionAgeMs: 1_800_000,
  maxConnectionAgeGraceMs: 60_000,
  http2MaxConcurrentStreams: 1000,
  maxHeaderListBytes: 16_384,
  maxHealthWatchers: 100,
  maxReflectionStreams: 100,
  reflectionIdleTimeoutMs: 60_000,
  maxHttp2Connections: 2000,
};

/** Something that is waiting for the rest of a request body. */
export interface PendingRead {
  /** Epoch ms by which the body must be complete. */
  readonly readBy: number;
  /** Called once, when readBy has passed; the reader answers and stops reading. */
  expire(now: number): void;
  /** Its place among the pending reads while it is one; ReadDeadlines alone sets it. */
  deadlineEntry?: UnderWayEntry<PendingRead> | undefined;
}

/**
 * The reads that have not finished, swept on one timer rather than one timer per request: most
 * unary requests arrive in the same packet as their headers, and a timer each would cost the hot
 * path for nothing. The sweep runs only while something waits; its period bounds how late an
 * expiry can be.
 */
export class ReadDeadlines {
  /** Not a Set: one entry per request, added and removed on the hot path (runtime/under-way.ts). */
  private readonly pending = new UnderWay<PendingRead>();
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly sweepMs = 50) {}

  /** Adding a read that is pending already changes nothing. */
  add(read: PendingRead): void {
    read.deadlineEntry ??= this.pending.add(read);
    if (this.timer === undefined) {
      this.timer = setInterval(() => this.sweep(), this.sweepMs);
      this.timer.unref();
    }
  }

  delete(read: PendingRead): void {
    if (read.deadlineEntry === undefined) return;
    this.pending.remove(read.deadlineEntry);
    read.deadlineEntry = undefined;
  }

  private sweep(): void {
    // Stopped here rather than in delete(), so that a steady trickle of quick requests does not
    // start and stop the timer on every one.
    if (this.pending.size === 0) {
      clearInterval(this.timer);
      this.timer = undefined;
      return;
    }
    const now = Date.now();
    for (const read of this.pending.values()) {
      if (read.readBy > now) continue;
      this.delete(read);
      read.expire(now);
    }
  }
}
