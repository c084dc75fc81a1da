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
// maxInFlight: the rest of the ceiling is room for callers within their guaranteed part. Only our
// own overload moves it down: the delay counts when the loop was also busy through the window
// (event-loop utilization at least BUSY). A loop that idled part of the window had no work waiting
// for it, so its late timers are other processes' load on the machine, and a smaller limit would
// refuse calls without relieving anything.
//
// The shares are max-min fair (Google SRE, "Handling Overload"): every caller active in the last
// window is guaranteed an equal part of the limit, and one caller may borrow beyond its part only
// what the other active callers are not using. So a caller that floods takes the idle capacity but
// never the part of a caller that sends one call now and then: the dashboard and the gateway keep
// theirs while the token service storms, and the other way round.
//
// A call for which there is no room waits instead of being refused, in a queue of its caller's own
// (after Netflix concurrency-limits' blocking and partitioned limiters): first in, first admitted,
// as soon as the caller may have one more call at work (its own calls end, the limit grows, another
// caller goes idle); callers with waiting calls take turns. Waiting costs a place in a queue and no
// work: the transport reads a waiting call's body only once it is admitted. Only the caller's own
// calls wait behind it, so a lone client's burst is served in order rather than refused, and no
// queue holds another caller's call back. Refused, at once and for the price of a counter update,
// is a call whose caller already has maxQueued waiting (Google SRE, "Handling Overload": refuse
// cheaply when the queue is full); the transport ends a wait at the call's deadline.

import { UnderWay, type UnderWayEntry } from "../../runtime/under-way.js";
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
  /** Calls of one caller that may wait for room; beyond it they are refused. 0: none wait. */
  readonly maxQueued: number;
}

export const DEFAULT_ADMISSION_SETTINGS: AdmissionSettings = {
  maxInFlight: 1000,
  // A saturated loop reads about one share of a storm per turn, and another caller's call waits for
  // that turn: at 256 the turns of a storm of GetConnection calls held a canary 40 ms at the median
  // and 115-140 ms at the p99; at 64, 11 and 68-81 ms, with the storm served as fast
  // (docs/performance.md, Overload).
  minInFlight: 64,
  // A saturated loop's turns at 50 ms held a storm's calls for 20-60 ms at the median before
  // another caller's call was read; at 20 ms they hold fewer (docs/performance.md, Overload).
  targetDelayMs: 20,
  callerIdleMs: 5_000,
  pushbackMs: 200,
  maxQueued: 1000,
};

/** What a window of delay above the target leaves of the limit, at most. */
const DECREASE = 0.8;
/** The part of the ceiling the adaptive limit may reach; the rest is kept for guaranteed parts. */
const BORROWABLE = 0.9;
/** Event-loop utilization over a window from which its delay is our own overload (see above). */
export const BUSY = 0.9;

interface CallerState {
  inFlight: number;
  lastSeenAt: number;
  /** How long its recent calls were at work, in ms (a moving average); undefined before the first. */
  workMs: number | undefined;
}

/** A caller whose calls are at work for less than this on average is answered without waiting on I/O. */
const QUICK_WORK_MS = 1;
/** The weight of each call in a caller's moving average of work time. */
const WORK_WEIGHT = 0.05;

/**
 * A unary call past admission, with the caller that authentication found (undefined: none, and the
 * pipeline will refuse it). It may first wait for room (`waiting`); the transport starts reading the
 * call's body when `whenAdmitted` says so. The pipeline claims it when it runs the call and releases
 * it when the call's work has settled; the transport abandons it when the call ends before the
 * pipeline ran it (a refused body, a reset stream), or expires it when its wait outlasts the call's
 * deadline. A ticket without a controller (admission off) holds nothing.
 */
export class AdmissionTicket {
  #state: "waiting" | "held" | "claimed" | "released";
  #onAdmitted: (() => void) | undefined;
  /** When the pipeline claimed it (performance.now()). */
  #claimedAt = 0;
  /** Its place in its caller's queue while it waits (the controller's alone to change). */
  queued: UnderWayEntry<AdmissionTicket> | undefined;

  constructor(
    private readonly controller: AdmissionController | undefined,
    readonly caller: CallerName | undefined,
    waiting = false,
    /** When it started to wait (the controller's clock). */
    readonly queuedAt = 0,
  ) {
    this.#state = waiting ? "waiting" : "held";
  }

  /** Waiting for room: its call must not be read or run yet. */
  get waiting(): boolean {
    return this.#state === "waiting";
  }

  /** Runs `listener` once the ticket holds its place: at once when it does already. */
  whenAdmitted(listener: () => void): void {
    if (this.#state === "waiting") this.#onAdmitted = listener;
    else if (this.#state !== "released") listener();
  }

  /** The pipeline runs the call: from now on only `release` ends the ticket. */
  claim(): void {
    if (this.#state !== "held") return;
    this.#state = "claimed";
    this.#claimedAt = performance.now();
  }

  /** The call's work settled: its hold on the limit ends. */
  release(): void {
    if (this.#state === "released") return;
    const held = this.#state !== "waiting";
    const workedMs = this.#state === "claimed" ? performance.now() - this.#claimedAt : undefined;
    this.#state = "released";
    this.#onAdmitted = undefined;
    if (held) this.controller?.release(keyOf(this.caller), workedMs);
    else this.controller?.leave(this, "cancelled");
  }

  /** The call ended before the pipeline ran it: its hold ends, unless the pipeline has it. */
  abandon(): void {
    if (this.#state === "held" || this.#state === "waiting") this.release();
  }

  /** The call's deadline came while it waited: it leaves its queue (counted as expired). */
  expire(): void {
    if (this.#state !== "waiting") return;
    this.#state = "released";
    this.#onAdmitted = undefined;
    this.controller?.leave(this, "expired");
  }

  /** Room was made for it (by the controller). */
  grant(): void {
    if (this.#state !== "waiting") return;
    this.#state = "held";
    const listener = this.#onAdmitted;
    this.#onAdmitted = undefined;
    listener?.();
  }
}

/** Calls that authenticate as nobody share one bucket: a flood of them cannot take a caller's share. */
export function keyOf(caller: CallerName | undefined): string {
  return caller ?? "unauthenticated";
}

/** How a wait ended: room was made, the call's deadline came first, or the client went away. */
export type WaitOutcome = "admitted" | "expired" | "cancelled";

/** One caller's waits so far: how each ended, and the seconds the admitted ones waited in all. */
export interface WaitCounts {
  admitted: number;
  expired: number;
  cancelled: number;
  admittedSeconds: number;
}

export interface AdmissionSnapshot {
  readonly limit: number;
  readonly inFlight: number;
  readonly inFlightByCaller: ReadonlyMap<string, number>;
  readonly waitingByCaller: ReadonlyMap<string, number>;
  /** Since the start, by caller (plain numbers, read when scraped). */
  readonly waitsByCaller: ReadonlyMap<string, Readonly<WaitCounts>>;
}

export class AdmissionController {
  private limitValue: number;
  private inFlight = 0;
  private readonly callers = new Map<string, CallerState>();
  /** Whether a call was refused or waited, or the limit was reached, since the last window: demand pressed on the limit. */
  private pressed = false;
  /**
   * The calls waiting for room, by caller, first in first; a caller's turn comes in this map's order.
   * Each queue is a list, not a Set: a storm's queue of a thousand calls churns, and the tables a
   * Set replaces would keep every call that passed through it alive until a mark-compact
   * (runtime/under-way.ts).
   */
  private readonly queues = new Map<string, UnderWay<AdmissionTicket>>();
  private readonly waits = new Map<string, WaitCounts>();
  /** The latest time any call was seen at: what `release` admits waiting calls at. */
  private clock = 0;
  private admitting = false;

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

  /**
   * A call of `caller`: a ticket that holds its place now, one that waits in the caller's queue
   * (behind the caller's calls that wait already), or why it is refused: no room, and the caller
   * has maxQueued calls waiting.
   */
  enter(caller: CallerName | undefined, now: number): AdmissionTicket | AdmissionRefusal {
    const key = keyOf(caller);
    // The caller's waiting calls go first: after this, if any still wait there is no room.
    if (this.queues.has(key)) this.admitWaiting(now);
    const queue = this.queues.get(key);
    const refusal = queue === undefined ? this.tryAdmit(key, now) : (this.whyNot(key, now) ?? "limit");
    if (refusal === undefined) return new AdmissionTicket(this, caller);
    if ((queue?.size ?? 0) >= this.settings.maxQueued) return refusal;
    const ticket = new AdmissionTicket(this, caller, true, now);
    let waiting = queue;
    if (waiting === undefined) {
      waiting = new UnderWay<AdmissionTicket>();
      this.queues.set(key, waiting);
    }
    ticket.queued = waiting.add(ticket);
    return ticket;
  }

  /** Counts one more call of `caller` in flight, or says why there is no room for it. */
  tryAdmit(caller: string, now: number): AdmissionRefusal | undefined {
    this.clock = Math.max(this.clock, now);
    const state = this.stateOf(caller, now);
    const refusal = this.refusalOf(caller, state, now);
    if (refusal !== undefined) {
      this.pressed = true;
      return refusal;
    }
    this.count(state);
    return undefined;
  }

  /** One of `caller`'s calls ended: its room goes to a waiting call, if one may have it. */
  release(caller: string, workedMs?: number): void {
    this.inFlight--;
    const state = this.callers.get(caller);
    if (state !== undefined) {
      state.inFlight--;
      if (workedMs !== undefined) {
        state.workMs = state.workMs === undefined ? workedMs : state.workMs + (workedMs - state.workMs) * WORK_WEIGHT;
      }
    }
    this.admitWaiting(this.clock);
  }

  /** Takes a waiting ticket out of its caller's queue; false when it was in none (admitted, or gone). */
  private dequeue(queue: UnderWay<AdmissionTicket>, ticket: AdmissionTicket): boolean {
    const place = ticket.queued;
    if (place === undefined) return false;
    ticket.queued = undefined;
    queue.remove(place);
    return true;
  }

  /** A waiting call leaves its queue without being admitted. */
  leave(ticket: AdmissionTicket, outcome: "expired" | "cancelled"): void {
    const key = keyOf(ticket.caller);
    const queue = this.queues.get(key);
    if (queue === undefined || !this.dequeue(queue, ticket)) return;
    if (queue.size === 0) this.queues.delete(key);
    this.waitCountsOf(key)[outcome]++;
  }

  /**
   * Admits the waiting calls for which there is room at `now`, one per caller in turn, the caller
   * served last going to the back. Runs whenever room may have been made: a call ended (`release`),
   * and each window, when the limit may have grown and callers gone idle.
   */
  admitWaiting(now: number): void {
    if (this.admitting) return; // a granted call that ends at once comes back here: the loop below goes on
    this.admitting = true;
    this.clock = Math.max(this.clock, now);
    try {
      let admitted = true;
      while (admitted) {
        admitted = false;
        for (const [key, queue] of this.queues) {
          if (this.whyNot(key, now) !== undefined) continue;
          const ticket = queue.oldest?.value as AdmissionTicket;
          this.dequeue(queue, ticket);
          // To the back of the turns, or gone with its last waiting call.
          this.queues.delete(key);
          if (queue.size > 0) this.queues.set(key, queue);
          this.count(this.stateOf(key, now));
          const counts = this.waitCountsOf(key);
          counts.admitted++;
          counts.admittedSeconds += (now - ticket.queuedAt) / 1000;
          ticket.grant();
          admitted = true;
          break;
        }
      }
    } finally {
      this.admitting = false;
    }
  }

  /**
   * The end of a window: the event loop's delay over it (ms) moves the limit, down only when the
   * loop was busy through it (`utilization`, 0 to 1: our own work, not the machine's load).
   */
  adapt(delayMs: number, utilization = 1): void {
    const { minInFlight, targetDelayMs } = this.settings;
    if (delayMs > targetDelayMs && utilization >= BUSY) {
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

  /**
   * Whether `caller`'s calls are answered without waiting on I/O (a cached check): its recent calls
   * were at work for less than QUICK_WORK_MS on average, and none of its calls wait for room.
   */
  quick(caller: string): boolean {
    const workMs = this.callers.get(caller)?.workMs;
    return workMs !== undefined && workMs < QUICK_WORK_MS && !this.queues.has(caller);
  }

  snapshot(): AdmissionSnapshot {
    const inFlightByCaller = new Map<string, number>();
    for (const [caller, state] of this.callers) inFlightByCaller.set(caller, state.inFlight);
    const waitingByCaller = new Map<string, number>();
    for (const [caller, queue] of this.queues) waitingByCaller.set(caller, queue.size);
    return { limit: this.limit, inFlight: this.inFlight, inFlightByCaller, waitingByCaller, waitsByCaller: this.waits };
  }

  private stateOf(caller: string, now: number): CallerState {
    let state = this.callers.get(caller);
    if (state === undefined) {
      state = { inFlight: 0, lastSeenAt: now, workMs: undefined };
      this.callers.set(caller, state);
    }
    state.lastSeenAt = Math.max(state.lastSeenAt, now);
    return state;
  }

  private count(state: CallerState): void {
    state.inFlight++;
    this.inFlight++;
    if (this.inFlight >= this.limit) this.pressed = true;
  }

  /** Why one more call of `caller` may not start now (demand pressed on the limit), or undefined. */
  private whyNot(caller: string, now: number): AdmissionRefusal | undefined {
    const refusal = this.refusalOf(caller, this.stateOf(caller, now), now);
    if (refusal !== undefined) this.pressed = true;
    return refusal;
  }

  private waitCountsOf(caller: string): WaitCounts {
    let counts = this.waits.get(caller);
    if (counts === undefined) {
      counts = { admitted: 0, expired: 0, cancelled: 0, admittedSeconds: 0 };
      this.waits.set(caller, counts);
    }
    return counts;
  }

  /** The limit over the callers active now (forgetting the others, except `keep`), at least 1. */
  private shareAt(now: number, keep: string | undefined): number {
    let active = 0;
    for (const [name, other] of this.callers) {
      if (other.inFlight > 0 || this.queues.has(name) || now - other.lastSeenAt < this.settings.callerIdleMs) active++;
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
