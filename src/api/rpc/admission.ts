// Admission control: how many unary calls may be at work at once, and how that bound is shared
// between callers. Pure (the clock is passed in), so that its decisions are tested without a server.
//
// The bound adapts by AIMD on event-loop delay (after Netflix concurrency-limits and Envoy's
// adaptive concurrency, which adapt to measured delay rather than trust a fixed number): in Node the
// queue that hurts is the one in front of the event loop, where a storm's requests wait to be
// parsed and the answers to be written, and the loop's delay is what a caller waits on top of its
// call. Each window the loop's delay is compared with a target: above it the limit shrinks by at
// least a fifth, and in proportion when the delay is many times the target (a saturated loop runs
// the window's timer late, so one window may stand for seconds); at or below it, while demand
// pressed on the limit, it grows by its square root. It stays between minInFlight and 90% of
// maxInFlight: the rest of the ceiling is room for callers within their guaranteed part.
//
// The shares are max-min fair (Google SRE, "Handling Overload"): every caller active in the last
// window is guaranteed an equal part of the limit, and one caller may borrow beyond its part only
// what the other active callers are not using. So a caller that floods takes the idle capacity but
// never the part of a caller that sends one call now and then: the dashboard and the gateway keep
// theirs while the token service storms, and the other way round. Refusing is a counter update.

import type { CallerName } from "../callers.js";

/** Why a call was refused: the whole replica was at its limit, or its caller was over its share. */
export type AdmissionRefusal = "limit" | "share";

export interface AdmissionSettings {
  /** The ceiling: unary calls at work at once, whatever the measurements say. 0 turns admission off. */
  readonly maxInFlight: number;
  /** The floor the adaptive limit never goes under. */
  readonly minInFlight: number;
  /** The event-loop delay (ms, 99th percentile over a window) above which the limit shrinks. */
  readonly targetDelayMs: number;
  /** How long after its last call a caller still counts as active and keeps its share. */
  readonly callerIdleMs: number;
  /** What a refused call is told to wait before it retries (grpc-retry-pushback-ms). */
  readonly pushbackMs: number;
}

export const DEFAULT_ADMISSION_SETTINGS: AdmissionSettings = {
  maxInFlight: 1000,
  minInFlight: 256,
  targetDelayMs: 50,
  callerIdleMs: 5_000,
  pushbackMs: 200,
};

/** What a window of delay above the target leaves of the limit, at most. */
const DECREASE = 0.8;
/** The part of the ceiling the adaptive limit may reach; the rest is kept for guaranteed parts. */
const BORROWABLE = 0.9;

interface CallerState {
  inFlight: number;
  lastSeenAt: number;
}

/**
 * A unary call past admission, with the caller that authentication found (undefined: none, and the
 * pipeline will refuse it). The pipeline claims it when it runs the call and releases it when the
 * call's work has settled; the transport abandons it when the call ends before the pipeline ran it
 * (a refused body, a reset stream). A ticket without a controller (admission off) holds nothing.
 */
export class AdmissionTicket {
  #state: "held" | "claimed" | "released" = "held";

  constructor(
    private readonly controller: AdmissionController | undefined,
    readonly caller: CallerName | undefined,
  ) {}

  /** The pipeline runs the call: from now on only `release` ends the ticket. */
  claim(): void {
    if (this.#state === "held") this.#state = "claimed";
  }

  /** The call's work settled: its hold on the limit ends. */
  release(): void {
    if (this.#state === "released") return;
    this.#state = "released";
    this.controller?.release(keyOf(this.caller));
  }

  /** The call ended before the pipeline ran it: its hold ends, unless the pipeline has it. */
  abandon(): void {
    if (this.#state === "held") this.release();
  }
}

/** Calls that authenticate as nobody share one bucket: a flood of them cannot take a caller's share. */
export function keyOf(caller: CallerName | undefined): string {
  return caller ?? "unauthenticated";
}

export interface AdmissionSnapshot {
  readonly limit: number;
  readonly inFlight: number;
  readonly inFlightByCaller: ReadonlyMap<string, number>;
}

export class AdmissionController {
  private limitValue: number;
  private inFlight = 0;
  private readonly callers = new Map<string, CallerState>();
  /** Whether a call was refused, or the limit was reached, since the last window: demand pressed on the limit. */
  private pressed = false;

  constructor(readonly settings: AdmissionSettings) {
    if (settings.minInFlight < 1 || settings.minInFlight > settings.maxInFlight) {
      throw new RangeError("admission: minInFlight must be from 1 to maxInFlight");
    }
    this.limitValue = this.highest;
  }

  /** The highest the adaptive limit goes. */
  private get highest(): number {
    return Math.max(this.settings.minInFlight, this.settings.maxInFlight * BORROWABLE);
  }

  get limit(): number {
    return Math.floor(this.limitValue);
  }

  /** Counts one more call of `caller` in flight, or says why it is refused. */
  tryAdmit(caller: string, now: number): AdmissionRefusal | undefined {
    let state = this.callers.get(caller);
    if (state === undefined) {
      state = { inFlight: 0, lastSeenAt: now };
      this.callers.set(caller, state);
    }
    state.lastSeenAt = now;
    const refusal = this.refusalOf(caller, state, now);
    if (refusal !== undefined) {
      this.pressed = true;
      return refusal;
    }
    state.inFlight++;
    this.inFlight++;
    if (this.inFlight >= this.limit) this.pressed = true;
    return undefined;
  }

  /** One of `caller`'s calls ended. */
  release(caller: string): void {
    this.inFlight--;
    const state = this.callers.get(caller);
    if (state !== undefined) state.inFlight--;
  }

  /** The end of a window: the event loop's delay over it (ms) moves the limit. */
  adapt(delayMs: number): void {
    const { minInFlight, targetDelayMs } = this.settings;
    if (delayMs > targetDelayMs) {
      this.limitValue = Math.max(minInFlight, this.limitValue * Math.min(DECREASE, targetDelayMs / delayMs));
    } else if (this.pressed) {
      this.limitValue = Math.min(this.highest, this.limitValue + Math.sqrt(this.limitValue));
    }
    this.pressed = false;
  }

  /**
   * Each active caller's guaranteed part of the limit now: what the transport spreads over a
   * caller's connections as their concurrent-stream limit (see stream-shares.ts).
   */
  share(now: number): number {
    return this.shareAt(now, undefined);
  }

  snapshot(): AdmissionSnapshot {
    const inFlightByCaller = new Map<string, number>();
    for (const [caller, state] of this.callers) inFlightByCaller.set(caller, state.inFlight);
    return { limit: this.limit, inFlight: this.inFlight, inFlightByCaller };
  }

  /** The limit over the callers active now (forgetting the others, except `keep`), at least 1. */
  private shareAt(now: number, keep: string | undefined): number {
    let active = 0;
    for (const [name, other] of this.callers) {
      if (other.inFlight > 0 || now - other.lastSeenAt < this.settings.callerIdleMs) active++;
      else if (name !== keep) this.callers.delete(name);
    }
    return Math.max(1, Math.floor(this.limit / Math.max(1, active)));
  }

  /**
   * Why one more of `caller`'s calls may not start, or undefined. Within its guaranteed part a
   * caller is admitted even when borrowers hold the adaptive limit (borrowing stops while anyone is
   * owed, so the excess ends as their calls finish), though never past the configured ceiling.
   * Beyond its part it may borrow only what no other active caller is owed.
   */
  private refusalOf(caller: string, state: CallerState, now: number): AdmissionRefusal | undefined {
    if (this.inFlight >= this.settings.maxInFlight) return "limit";
    const limit = this.limit;
    const share = this.shareAt(now, caller);
    if (state.inFlight < share) return undefined;
    if (this.inFlight >= limit) return "limit";
    let owed = 0;
    for (const [name, other] of this.callers) {
      if (name !== caller && other.inFlight < share) owed += share - other.inFlight;
    }
    return this.inFlight + 1 + owed <= limit ? undefined : "share";
  }
}
