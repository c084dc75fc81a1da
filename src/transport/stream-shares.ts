// Per-caller bounds on HTTP/2 streams, so that a storm's excess waits in the storming client and not
// in front of our event loop.
//
// node:http2 reads everything a connection has sent and parses every HEADERS frame in one turn of the
// event loop, before admission control sees any of them: with 20,000 calls in flight a turn lasts
// seconds, and a canary that admission would admit at once waits for it (docs/performance.md,
// Overload). SETTINGS_MAX_CONCURRENT_STREAMS is the one bound a client obeys before it sends. So:
//
// - a connection starts with FIRST_STREAMS, until its first stream says what it carries: a storm
//   of new connections brings a few streams each, not a hundred;
// - once a gRPC unary call names its caller, the connection gets that caller's share of the
//   admission limit spread over the caller's connections (at least one stream): a caller that
//   opens 200 connections gets no more streams than one that opens one, beyond that one each;
// - except that a caller whose calls are answered without waiting on I/O (cached checks: at work
//   under a millisecond on average, and none waiting for room) gets at least BATCHED_STREAMS a
//   connection. A call alone on its connection costs about twice the CPU of one of several (its
//   own read, write and HTTP/2 bookkeeping), so a storm on 200 one-stream connections was served
//   at 0.4x the rate of the same calls on 8 connections. Such calls never pile up at work, and
//   the read budget below still bounds what one turn reads. A caller whose calls wait on the store
//   keeps its share alone: more streams would pile its calls up in front of the store, ahead of
//   every other caller's (docs/performance.md, Overload);
// - a connection that carries more than one caller, a call that authenticates as nobody, or a
//   pipeline stream whose caller the transport does not learn (Connect, gRPC-Web, the change feed)
//   is mixed: a proxy's connection, never held for one of its callers, and it gets
//   HTTP2_MAX_CONCURRENT_STREAMS from then on;
// - health and reflection streams need no credentials and change nothing but the room they take:
//   a connection that carries only them gets HTTP2_MAX_CONCURRENT_STREAMS, and a held one gets one
//   more stream for each that is open on it (a health Watch never starves its client's calls).
//
// Stream limits bound what a caller has open, not what it sends in one turn of the event loop: a
// storm of 200 connections with one stream each still brings 200 calls per turn, answered at once
// and resent at once, and every other caller's call waits for that turn. So a caller also has a
// read budget per turn, its share: once that many of its calls were read in one turn, reading its
// held connections stops (the socket's handle: the kernel keeps their bytes, TCP flow control
// holds the client). Only reading stops: answers are written as always. When the loop turns, the
// caller's stopped connections are read again in rotation, the longest stopped first: as many as
// their streams take to fill the next turn's budget twice over, not all of them, since stopping
// and starting a socket's reading costs a system call each (epoll_ctl; with 200 connections and a
// small budget, a fifth of the service's CPU). A connection that was started but not read before
// the budget ran out keeps its place at the front. A turn in which the caller did not reach its
// budget starts every one of its stopped connections, so the service never idles while a storm's
// bytes wait, and a connection stays stopped a few turns at most (keepalive PINGs wait as long).
//
// Streams a client opened before it saw a lowered limit get RST_STREAM REFUSED_STREAM from nghttp2
// before node sees them, which gRPC clients retry transparently (the server never saw the call).
// The limits follow the admission limit and the connections' count on a timer, and a connection's
// is resent only when it moves by a quarter, once the previous one was acknowledged, and lowered
// no sooner than a second after it: neither the AIMD limit's steps nor connections coming and going
// make a storm of SETTINGS frames (nor of the refusals each lowering causes).

import type { Http2Session } from "node:http2";
import type { AdmissionController } from "../api/rpc/admission.js";
import type { PortObserver } from "./refusals.js";

/**
 * What a connection may open before its first stream is seen: a client's first burst of up to 16
 * calls (h2load's -m16; a service's checks at its start) is not refused, while a storm of new
 * connections brings 16 calls each, not a hundred. Clients send their first streams before they
 * read any SETTINGS, so with 4 each such burst lost all but 4 to REFUSED_STREAM, which gRPC C-core
 * reports as UNAVAILABLE and h2load as failures.
 */
export const FIRST_STREAMS = 16;
/**
 * What a connection of a caller whose calls are answered without waiting on I/O may carry at least.
 * 16 rather than 8 since V8's heap growth is held (src/runtime/heap-growth.ts): 8 had kept a
 * storm's RSS under 1.5x idle, and 16 served the token service's storm at 1.6x the rate, its
 * canaries' p99 lower (docs/performance.md, Overload).
 */
export const BATCHED_STREAMS = 16;
/** How often the held connections' limits follow the admission limit and the connections' count. */
const RECOMPUTE_MS = 250;
/** A recomputation lowers a connection's limit no sooner than this after its last SETTINGS. */
const STEADY_MS = 1_000;

/** A connection that carries one caller's calls (or none yet), with the limit last sent to it. */
interface Single {
  /** Undefined until a call names it. */
  caller: string | undefined;
  limit: number;
  /** When its last SETTINGS was sent (performance.now()). */
  sentAt: number;
  /** Health and reflection streams open on it, which need room beside the calls. */
  beside: number;
  /** The turn (CallerStreamShares' count) in which a call was last read on it. */
  readInTurn: number;
}

/** A connection that carried more than one caller's calls, or calls of no known caller: never held. */
const MIXED = "mixed";

/** The handle under a session's socket (node:http2 reads it itself): stopping it stops the reading. */
interface ReadingHandle {
  readStart(): number;
  readStop(): number;
}

export class CallerStreamShares {
  private readonly sessions = new Map<Http2Session, Single | typeof MIXED>();
  /**
   * Each open connection's socket handle, taken once when it opens: reaching it through
   * `session.socket` goes through node:http2's socket Proxy, which cost 1.0-1.8 µs per call in a
   * storm, where handles are stopped and started every turn.
   */
  private readonly handles = new Map<Http2Session, ReadingHandle>();
  private readonly byCaller = new Map<string, Set<Http2Session>>();
  private timer: NodeJS.Timeout | undefined;
  /** Calls read in this turn of the event loop, by caller; forgotten when the loop turns. */
  private readonly readThisTurn = new Map<string, number>();
  /** Turns of the event loop in which calls were read, counted. */
  private turn = 0;
  /** This turn's read budget of each caller (its share), read once per turn. */
  private turnBudget: number | undefined;
  /** Each caller's held connections whose reading is stopped, in the order they are read again. */
  private readonly stopped = new Map<string, Set<Http2Session>>();
  private turnEnd: NodeJS.Immediate | undefined;

  /**
   * @param admission each active caller's share of its limit, and whether its calls are quick
   * @param configured HTTP2_MAX_CONCURRENT_STREAMS: what a mixed or health-only connection gets, and
   *   the most a held one gets
   */
  constructor(
    private readonly admission: AdmissionController,
    private readonly configured: number,
    private readonly observer?: PortObserver,
  ) {}

  /** The SETTINGS_MAX_CONCURRENT_STREAMS every connection starts with. */
  get firstStreams(): number {
    return Math.min(FIRST_STREAMS, this.configured);
  }

  /** A new connection: FIRST_STREAMS until its first stream. */
  opened(session: Http2Session): void {
    this.sessions.set(session, {
      caller: undefined,
      limit: this.firstStreams,
      sentAt: performance.now(),
      beside: 0,
      readInTurn: -1,
    });
    const handle = socketHandleOf(session);
    if (handle !== undefined) this.handles.set(session, handle);
    session.once("close", () => {
      const state = this.sessions.get(session);
      this.sessions.delete(session);
      this.handles.delete(session);
      if (state !== undefined && state !== MIXED && state.caller !== undefined) this.release(session, state.caller);
    });
  }

  /** A unary call on `session` authenticated as `caller` (undefined: as nobody). */
  called(session: Http2Session | undefined, caller: string | undefined): void {
    const state = session === undefined ? undefined : this.sessions.get(session);
    if (session === undefined || state === undefined || state === MIXED) return;
    if (caller !== undefined && state.caller === caller) this.count(session, state, caller);
    else if (caller !== undefined && state.caller === undefined) this.hold(session, state, caller);
    else this.mix(session, state);
  }

  /** A pipeline stream on `session` whose caller the transport does not learn. */
  unattributed(session: Http2Session | undefined): void {
    const state = session === undefined ? undefined : this.sessions.get(session);
    if (session !== undefined && state !== undefined && state !== MIXED) this.mix(session, state);
  }

  /** A stream that needs no credentials (health, reflection): room for it beside the calls, while it lasts. */
  beside(session: Http2Session | undefined, closed: (listener: () => void) => void): void {
    const state = session === undefined ? undefined : this.sessions.get(session);
    if (session === undefined || state === undefined || state === MIXED) return;
    state.beside++;
    closed(() => state.beside--);
    // More room at once (raising a limit refuses nothing); less only at a recomputation.
    const limit = this.limitOf(state);
    if (limit > state.limit) this.send(session, state, limit, true);
  }

  /** Each active caller's share of admission's limit now. */
  private share(): number {
    return this.admission.share(performance.now());
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    this.resumeReading();
  }

  /**
   * One more of `caller`'s calls read on its held connection `session`: at its budget its
   * connections stop reading (and any of them read after that, too).
   */
  private count(session: Http2Session, state: Single, caller: string): void {
    const read = (this.readThisTurn.get(caller) ?? 0) + 1;
    this.readThisTurn.set(caller, read);
    state.readInTurn = this.turn;
    // Immediates run once this turn's reads are done: the turn's end forgets its counts (so a
    // budget is never reached across turns) and starts the rotation.
    this.turnEnd ??= setImmediate(() => this.endTurn());
    this.turnBudget ??= this.share();
    if (read < this.turnBudget) return;
    if (read === this.turnBudget) this.observer?.readsHeld(caller);
    const queue = this.stopped.get(caller) ?? new Set<Http2Session>();
    // Started but not read this turn: first in line next turn, ahead of those stopped before.
    const unread: Http2Session[] = [];
    for (const held of read === this.turnBudget ? (this.byCaller.get(caller) ?? []) : [session]) {
      const handle = this.readingHandleOf(held);
      if (handle === undefined || queue.has(held)) continue;
      handle.readStop();
      if ((this.sessions.get(held) as Single | undefined)?.readInTurn === this.turn) queue.add(held);
      else unread.push(held);
    }
    this.stopped.set(caller, unread.length === 0 ? queue : new Set([...unread, ...queue]));
  }

  /**
   * The loop turned: each caller that reached its budget gets enough of its stopped connections read
   * again, the longest stopped first; any other caller gets all of them. While connections stay
   * stopped, the next turn ends here too.
   */
  private endTurn(): void {
    this.turnEnd = undefined;
    const budget = this.turnBudget;
    for (const [caller, queue] of this.stopped) {
      const reachedBudget = budget !== undefined && (this.readThisTurn.get(caller) ?? 0) >= budget;
      let room = reachedBudget ? 2 * budget : Number.POSITIVE_INFINITY;
      for (const session of queue) {
        if (room <= 0) break;
        queue.delete(session);
        const state = this.sessions.get(session);
        room -= state === undefined || state === MIXED ? 1 : state.limit;
        this.readingHandleOf(session)?.readStart();
      }
      if (queue.size === 0) this.stopped.delete(caller);
    }
    this.forgetTurn();
    if (this.stopped.size > 0) this.turnEnd = setImmediate(() => this.endTurn());
  }

  /** Every stopped connection reads again at once. */
  private resumeReading(): void {
    if (this.turnEnd !== undefined) clearImmediate(this.turnEnd);
    this.turnEnd = undefined;
    this.forgetTurn();
    for (const queue of this.stopped.values()) {
      for (const session of queue) this.readingHandleOf(session)?.readStart();
    }
    this.stopped.clear();
  }

  /** The socket handle a session reads from, while it is open. */
  private readingHandleOf(session: Http2Session): ReadingHandle | undefined {
    return session.destroyed ? undefined : this.handles.get(session);
  }

  private forgetTurn(): void {
    this.readThisTurn.clear();
    this.turn++;
    this.turnBudget = undefined;
  }

  /** What a connection that carries one caller's calls, or none yet, may have open now. */
  private limitOf(state: Single, share = this.share()): number {
    if (state.caller === undefined) return this.configured;
    const connections = this.byCaller.get(state.caller)?.size ?? 1;
    const least = this.admission.quick(state.caller) ? BATCHED_STREAMS : 1;
    const calls = Math.max(least, Math.floor(share / connections));
    return Math.min(this.configured, calls + state.beside);
  }

  private hold(session: Http2Session, state: Single, caller: string): void {
    state.caller = caller;
    let sessions = this.byCaller.get(caller);
    if (sessions === undefined) {
      sessions = new Set();
      this.byCaller.set(caller, sessions);
    }
    sessions.add(session);
    // Lower at once, so that a storm's connection is held from its first call. Raised only at the
    // next recomputation: connections that open together are counted together there, instead of
    // the first getting the whole share, the second half of it, and so on until they are counted.
    const limit = this.limitOf(state);
    if (limit < state.limit) this.send(session, state, limit, true);
    this.timer ??= setInterval(() => this.recompute(), RECOMPUTE_MS).unref();
    this.count(session, state, caller);
  }

  private mix(session: Http2Session, state: Single): void {
    this.sessions.set(session, MIXED);
    if (state.caller !== undefined) this.release(session, state.caller);
    if (state.limit !== this.configured) this.send(session, state, this.configured, true);
  }

  private release(session: Http2Session, caller: string): void {
    const sessions = this.byCaller.get(caller);
    sessions?.delete(session);
    if (sessions?.size === 0) this.byCaller.delete(caller);
    // No longer read in the caller's rotation (closed, or now mixed): it reads again at once.
    const queue = this.stopped.get(caller);
    if (queue?.delete(session) !== true) return;
    if (queue.size === 0) this.stopped.delete(caller);
    this.readingHandleOf(session)?.readStart();
  }

  private recompute(): void {
    if (this.byCaller.size === 0) {
      this.stop();
      return;
    }
    const now = performance.now();
    // Once per round: the share walks every caller admission knows.
    const share = this.share();
    for (const sessions of this.byCaller.values()) {
      for (const session of sessions) {
        const state = this.sessions.get(session);
        if (state === undefined || state === MIXED) continue;
        const limit = this.limitOf(state, share);
        // Moves of less than a quarter are not worth a SETTINGS frame; lowering refuses the streams
        // on the wire, so it waits a while after the previous SETTINGS.
        const worth = Math.abs(limit - state.limit) * 4 >= state.limit;
        if (worth && (limit > state.limit || now - state.sentAt >= STEADY_MS)) this.send(session, state, limit, false);
      }
    }
  }

  /**
   * Sends `limit`. A recomputation waits until the previous SETTINGS is acknowledged (the next round
   * tries again); holding, releasing and making room do not wait.
   */
  private send(session: Http2Session, state: Single, limit: number, evenIfPending: boolean): void {
    if (session.closed || session.destroyed || (session.pendingSettingsAck && !evenIfPending)) return;
    try {
      session.settings({ maxConcurrentStreams: limit });
      state.limit = limit;
      state.sentAt = performance.now();
    } catch {
      // Too many SETTINGS unacknowledged (a client that does not answer them): left as it is.
    }
  }
}

/** The handle under a session's socket (node:http2's socket proxy passes `_handle` through). */
function socketHandleOf(session: Http2Session): ReadingHandle | undefined {
  const handle = (session.socket as { _handle?: Partial<ReadingHandle> | null } | undefined)?._handle;
  return typeof handle?.readStop === "function" && typeof handle.readStart === "function"
    ? (handle as ReadingHandle)
    : undefined;
}
