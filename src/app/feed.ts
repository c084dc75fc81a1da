// The change feed behind WatchConnectionEvents: every ConnectionEvent in commit order, from any
// cursor, exactly once and without gaps, on one replica or many.
//
// Order and completeness come from the database: each event has a place in the feed (a
// FeedPosition: its transaction id and a position, see feedTransactionOrder in
// src/store/migrations.ts), and the store reads only places that no running transaction can come
// before, so "every event after place p" is a plain range read and a reader that has seen place P
// can never later find an event before P. A cursor is (feed identity, place): the place up to
// which the watcher has been given every event it may see, so resuming reads from there.
//
// Cost: one shared poller per process (not one query loop per watcher) reads the new events of
// every Connection once, keeps the most recent ones in a ring, and hands each live watcher the ones
// it may see. A watcher that starts behind the ring (an old cursor) catches up with its own paged
// reads, each bounded above by the poller's head, and joins the live set once the ring covers
// where it stands: the check and the join happen in one synchronous step, so nothing falls
// between the two. The poller wakes on this process's writes and on other replicas' commits
// (PostgreSQL NOTIFY), and polls anyway every `pollIntervalMs`, so a lost notification only delays.
//
// Bounds: MAX_WATCHERS streams; each live watcher has a queue of at most MAX_QUEUED_EVENTS, and the
// transport takes a message only once the previous one was written (connect-node waits for
// 'drain'), so a consumer that does not read stops taking messages, its queue fills, and it is
// ended with WATCHER_TOO_SLOW instead of holding memory. Catching up reads one page at a time, only
// when the transport asks for more. Shutdown ends every stream with UNAVAILABLE.

import {
  type EventRecord,
  FEED_START,
  type FeedEntry,
  type FeedPosition,
  feedPosition,
  feedPositionParts,
  laterFeedPosition,
  type Store,
} from "../store/store.js";
import { invalidArgument, ServiceError } from "./errors.js";

export interface FeedOptions {
  /** Watch streams per process; one more is RESOURCE_EXHAUSTED TOO_MANY_WATCHERS. */
  readonly maxWatchers: number;
  /** A message with the current cursor goes out when nothing else did for this long. */
  readonly heartbeatMs: number;
  /** The catch-up poll that bounds the delay when a notification was lost. */
  readonly pollIntervalMs: number;
}

/** Where a watch starts: after a cursor, now, or (neither) at the first event ever recorded. */
export interface WatchStart {
  readonly startAfter: string;
  readonly startAtNow: boolean;
}

/** Which events a watcher may see. */
export interface Viewer {
  /** Events of Connections this organization is a party to; undefined for every Connection. */
  readonly organizationId: string | undefined;
}

export interface WatchControl {
  /** Aborts when the client went away: the stream ends without a status (there is no one to tell). */
  readonly signal: AbortSignal;
  /** The client's deadline (ms since the epoch): the stream then ends with DEADLINE_EXCEEDED. */
  readonly deadline: number | undefined;
  /**
   * Resets the stream without a status. Used for a stream that must end (too slow, shutdown) while
   * its client has not read for a few heartbeat intervals: the status could not reach it anyway, and
   * the stream must not hold its watcher slot for as long as the client keeps the connection open.
   */
  readonly abandon?: () => void;
  /**
   * Aborts when the stream's connection reached its maximum age: the stream ends with UNAVAILABLE
   * (and the client resumes from its cursor on a new connection) before the connection is cut.
   */
  readonly connectionAging?: AbortSignal | undefined;
}

/** One message of the stream. */
export interface FeedBatch {
  readonly events: EventRecord[];
  readonly cursor: string;
}

/** Live watchers whose consumer stops reading are ended once this many of their events wait. */
export const MAX_QUEUED_EVENTS = 1000;
/** Events per message; also the page size of a watcher catching up. */
export const EVENTS_PER_MESSAGE = 100;
/**
 * Recent events the poller keeps so that a watcher that finishes catching up can go live. Half the
 * queue bound: a watcher that goes live with the whole ring queued still has room to fall behind.
 */
const RING_SIZE = MAX_QUEUED_EVENTS / 2;
/** The first look again after a wake-up whose poll found nothing; it doubles up to the poll interval. */
const RECHECK_FIRST_MS = 20;
/** The poller reads at most this many events per query (and loops while there are more). */
const POLL_PAGE = 1000;
/** Cursors since places carry transaction ids; "f1." cursors (a dense position) still resume. */
const CURSOR_PREFIX = "f2.";
const CURSOR_PREFIX_V1 = "f1.";
/** Heartbeat intervals that a stream which must end waits for its client to read, before a reset. */
const ABANDON_AFTER_HEARTBEATS = 4;

/** What the feed has done since start, for metrics. */
export interface FeedStats {
  /** Events the shared poller read. */
  readonly events: number;
  /** Events queued for a watcher (one event to three watchers counts three). */
  readonly deliveries: number;
  /** Periodic polls that found events no wake-up had announced (a lost NOTIFY, or polling only). */
  readonly pollFallbacks: number;
  /** Seconds from the newest event's creation to its being read, at the last read (0 before). */
  readonly lagSeconds: number;
}

export class Feed {
  readonly #watchers = new Set<Watcher>();
  readonly #live = new Set<Watcher>();
  /** Recent entries: exactly the places (#floor, #head], in order. */
  #ring: FeedEntry[] = [];
  #floor: FeedPosition = FEED_START;
  /** Every event up to here is committed and has been read; undefined while nobody watches. */
  #head: FeedPosition | undefined;
  #starting: Promise<void> | undefined;
  #polling: Promise<void> | undefined;
  #pollAgain = false;
  #pollTimer: NodeJS.Timeout | undefined;
  /** After a wake-up whose poll found nothing: the next look, sooner than the periodic poll. */
  #recheckMs: number | undefined;
  #recheckTimer: NodeJS.Timeout | undefined;
  #unsubscribe: (() => void) | undefined;
  #shuttingDown = false;
  #stats = { events: 0, deliveries: 0, pollFallbacks: 0, lagSeconds: 0 };

  constructor(
    private readonly store: Store,
    private readonly options: FeedOptions,
    private readonly onPollError: (error: unknown) => void,
  ) {}

  get watcherCount(): number {
    return this.#watchers.size;
  }

  stats(): FeedStats {
    return { ...this.#stats };
  }

  /**
   * The stream of one watcher. Throws (from the first step on) INVALID_ARGUMENT for a bad cursor,
   * TOO_MANY_WATCHERS, and at the end WATCHER_TOO_SLOW, SHUTTING_DOWN or DEADLINE_EXCEEDED.
   */
  async *watch(viewer: Viewer, start: WatchStart, control: WatchControl): AsyncGenerator<FeedBatch, void> {
    if (this.#shuttingDown) throw shuttingDown();
    if (this.#watchers.size >= this.options.maxWatchers) {
      throw new ServiceError(
        "TOO_MANY_WATCHERS",
        `this replica serves at most ${this.options.maxWatchers} watch streams; retry with backoff or on another replica`,
      );
    }
    const watcher = new Watcher(viewer, control, this.options.heartbeatMs);
    this.#watchers.add(watcher);
    try {
      const feedId = await this.store.feedId();
      watcher.position = await this.#startPosition(start, feedId);
      await this.#start();
      yield* this.#catchUp(watcher, feedId);
      yield* this.#followLive(watcher, feedId);
    } finally {
      watcher.dispose();
      this.#watchers.delete(watcher);
      this.#live.delete(watcher);
      if (this.#watchers.size === 0) this.#stop();
    }
  }

  /** Ends every stream with UNAVAILABLE SHUTTING_DOWN and refuses new ones. */
  shutDown(): void {
    this.#shuttingDown = true;
    for (const watcher of this.#watchers) watcher.end(shuttingDown());
  }

  async #startPosition(start: WatchStart, feedId: string): Promise<FeedPosition> {
    if (start.startAtNow) {
      if (start.startAfter !== "") throw invalidArgument("start_after", "set start_after or start_at_now, not both");
      return this.store.feedHead();
    }
    if (start.startAfter === "") return FEED_START;
    const position = decodeCursor(start.startAfter, feedId);
    // Every cursor this feed issues names an event's place (or the start).
    if (position !== FEED_START && !(await this.store.feedContains(position))) throw invalidCursor();
    return position;
  }

  /** Pages through the store until the ring covers the watcher, then joins the live set. */
  async *#catchUp(watcher: Watcher, feedId: string): AsyncGenerator<FeedBatch, void> {
    let announced = false;
    for (;;) {
      watcher.check();
      if (watcher.control.signal.aborted) return;
      if (watcher.position >= this.#floor) {
        // Synchronous from here to the add: no poll can slip in between.
        for (const entry of this.#ring) if (entry.position > watcher.position) this.#offer(watcher, entry);
        watcher.position = laterFeedPosition(watcher.position, this.#head ?? FEED_START);
        this.#live.add(watcher);
        if (!announced) yield watcher.take(feedId);
        return;
      }
      const through = this.#head ?? FEED_START;
      const entries = await this.store.readFeed({
        after: watcher.position,
        through,
        organizationId: watcher.viewer.organizationId,
        limit: EVENTS_PER_MESSAGE,
      });
      watcher.check();
      const last = entries.at(-1);
      // A short page means nothing else visible up to `through`.
      watcher.position = entries.length === EVENTS_PER_MESSAGE && last !== undefined ? last.position : through;
      if (entries.length > 0 || !announced) {
        announced = true;
        watcher.sent();
        yield { events: entries.map((entry) => entry.event), cursor: encodeCursor(feedId, watcher.position) };
      }
    }
  }

  async *#followLive(watcher: Watcher, feedId: string): AsyncGenerator<FeedBatch, void> {
    for (;;) {
      await watcher.ready();
      watcher.check();
      if (watcher.control.signal.aborted) return;
      yield watcher.take(feedId);
    }
  }

  /** Starts the shared poller for the first watcher (or waits for the start under way). */
  #start(): Promise<void> {
    if (this.#head !== undefined) return Promise.resolve();
    this.#starting ??= (async () => {
      try {
        const head = await this.store.feedHead();
        // Every watcher left while the head was read: nothing to start (the next one starts again).
        if (this.#watchers.size === 0) return;
        this.#head = head;
        this.#floor = head;
        this.#ring = [];
        this.#unsubscribe = this.store.onFeedAppended(() => this.#woken());
        this.#pollTimer = setInterval(() => this.#poll(true), this.options.pollIntervalMs);
        this.#pollTimer.unref();
        // Anything committed between the head read and the subscription.
        this.#poll();
      } finally {
        this.#starting = undefined;
      }
    })();
    return this.#starting;
  }

  /** With no watcher left, nothing polls; the next one starts from the head again. */
  #stop(): void {
    clearInterval(this.#pollTimer);
    this.#pollTimer = undefined;
    clearTimeout(this.#recheckTimer);
    this.#recheckTimer = undefined;
    this.#recheckMs = undefined;
    this.#unsubscribe?.();
    this.#unsubscribe = undefined;
    this.#head = undefined;
    this.#ring = [];
    this.#floor = FEED_START;
  }

  /**
   * Something committed (here, or on another replica). Its events may not be readable yet: on
   * PostgreSQL they wait until every older transaction has ended, and one that ends elsewhere (a
   * session outside the service) tells no one. So a wake-up whose poll finds nothing looks again
   * soon, at growing intervals, until one finds something or the periodic poll takes over.
   */
  #woken(): void {
    this.#recheckMs = RECHECK_FIRST_MS;
    this.#poll();
  }

  /** One poll at a time; a wake-up during a poll runs one more afterwards. */
  #poll(periodic = false): void {
    if (this.#head === undefined) return;
    if (this.#polling !== undefined) {
      this.#pollAgain = true;
      return;
    }
    this.#polling = this.#pollUntilCurrent(periodic)
      .then((found) => this.#recheck(found))
      .catch((error: unknown) => this.onPollError(error))
      .finally(() => {
        this.#polling = undefined;
        if (this.#pollAgain) {
          this.#pollAgain = false;
          this.#poll();
        }
      });
  }

  #recheck(found: boolean): void {
    clearTimeout(this.#recheckTimer);
    this.#recheckTimer = undefined;
    const delay = this.#recheckMs;
    if (found || delay === undefined || delay >= this.options.pollIntervalMs || this.#head === undefined) {
      this.#recheckMs = undefined;
      return;
    }
    this.#recheckMs = delay * 2;
    this.#recheckTimer = setTimeout(() => this.#poll(), delay);
    this.#recheckTimer.unref();
  }

  /** Reads until current; whether it found any event. */
  async #pollUntilCurrent(periodic: boolean): Promise<boolean> {
    let found = false;
    for (let page = 0; ; page++) {
      const head = this.#head;
      if (head === undefined) return found;
      const entries = await this.store.readFeed({
        after: head,
        through: undefined,
        organizationId: undefined,
        limit: POLL_PAGE,
      });
      // Stopped (no watcher left) or restarted while the query ran: its result belongs to no one.
      if (this.#head !== head || entries.length === 0) return found;
      if (periodic && page === 0) this.#stats.pollFallbacks++;
      found = true;
      this.#append(entries);
      if (entries.length < POLL_PAGE) return found;
    }
  }

  #offer(watcher: Watcher, entry: FeedEntry): void {
    this.#stats.deliveries++;
    watcher.offer(entry);
  }

  #append(entries: readonly FeedEntry[]): void {
    const newest = entries.at(-1);
    const head = newest?.position ?? FEED_START;
    this.#stats.events += entries.length;
    if (newest !== undefined) this.#stats.lagSeconds = (Date.now() - newest.event.createTime.getTime()) / 1000;
    this.#ring.push(...entries);
    const excess = this.#ring.length - RING_SIZE;
    if (excess > 0) {
      this.#floor = this.#ring[excess - 1]?.position ?? this.#floor;
      this.#ring.splice(0, excess);
    }
    this.#head = head;
    for (const watcher of this.#live) {
      for (const entry of entries) if (entry.position > watcher.position) this.#offer(watcher, entry);
      watcher.advanceTo(head);
    }
  }
}

/** One stream's state: where it stands, what waits for it, and why it must end. */
class Watcher {
  /** Every event it may see up to here has been queued or sent. */
  position: FeedPosition = FEED_START;
  readonly #queue: FeedEntry[] = [];
  #ended: ServiceError | undefined;
  #wake: (() => void) | undefined;
  #heartbeatDue = false;
  #heartbeat: NodeJS.Timeout;
  #deadline: NodeJS.Timeout | undefined;
  #abandon: NodeJS.Timeout | undefined;
  readonly #onAbort = () => this.#notify();
  readonly #onAging = () =>
    this.end(
      new ServiceError(
        "CONNECTION_MAX_AGE",
        "the connection reached its maximum age; reconnect and resume from the last cursor",
      ),
    );

  constructor(
    readonly viewer: Viewer,
    readonly control: WatchControl,
    private readonly heartbeatMs: number,
  ) {
    this.#heartbeat = this.#armHeartbeat();
    control.signal.addEventListener("abort", this.#onAbort, { once: true });
    control.connectionAging?.addEventListener("abort", this.#onAging, { once: true });
    if (control.connectionAging?.aborted === true) this.#onAging();
    if (control.deadline !== undefined) {
      this.#deadline = setTimeout(
        () =>
          this.end(new ServiceError("DEADLINE_EXCEEDED", "the client's deadline passed; resume from the last cursor")),
        Math.max(control.deadline - Date.now(), 0),
      );
      this.#deadline.unref();
    }
  }

  /** Queues an entry that is past the watcher's position, if the watcher may see it. */
  offer(entry: FeedEntry): void {
    const organizationId = this.viewer.organizationId;
    if (
      organizationId !== undefined &&
      entry.sourceOrganizationId !== organizationId &&
      entry.destinationOrganizationId !== organizationId
    ) {
      return;
    }
    if (this.#queue.length >= MAX_QUEUED_EVENTS) {
      this.end(
        new ServiceError(
          "WATCHER_TOO_SLOW",
          "the stream was not read fast enough to keep up with the feed; resume from the last cursor received",
        ),
      );
      return;
    }
    this.#queue.push(entry);
    this.#notify();
  }

  advanceTo(position: FeedPosition): void {
    this.position = laterFeedPosition(this.position, position);
  }

  end(reason: ServiceError): void {
    if (this.#ended !== undefined) return;
    this.#ended = reason;
    this.#notify();
    // Cleared by dispose() when the stream gets to send its status in time.
    const abandon = this.control.abandon;
    if (abandon !== undefined) {
      this.#abandon = setTimeout(abandon, ABANDON_AFTER_HEARTBEATS * this.heartbeatMs);
      this.#abandon.unref();
    }
  }

  /** Throws the reason this stream must end, if there is one. */
  check(): void {
    if (this.#ended !== undefined) throw this.#ended;
  }

  /** Resolves when there is something to send (events, a heartbeat) or a reason to stop. */
  ready(): Promise<void> {
    if (this.#queue.length > 0 || this.#heartbeatDue || this.#ended !== undefined || this.control.signal.aborted) {
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this.#wake = resolve;
    });
  }

  /** The next message: queued events (at most a message's worth) or a heartbeat. */
  take(feedId: string): FeedBatch {
    const entries = this.#queue.splice(0, EVENTS_PER_MESSAGE);
    const last = entries.at(-1);
    const position = this.#queue.length > 0 && last !== undefined ? last.position : this.position;
    this.sent();
    return { events: entries.map((entry) => entry.event), cursor: encodeCursor(feedId, position) };
  }

  /** A message went out: the next heartbeat is a full interval away. */
  sent(): void {
    this.#heartbeatDue = false;
    this.#heartbeat.refresh();
  }

  dispose(): void {
    clearTimeout(this.#heartbeat);
    clearTimeout(this.#deadline);
    clearTimeout(this.#abandon);
    this.control.signal.removeEventListener("abort", this.#onAbort);
    this.control.connectionAging?.removeEventListener("abort", this.#onAging);
    this.#queue.length = 0;
  }

  #armHeartbeat(): NodeJS.Timeout {
    const timer = setTimeout(() => {
      this.#heartbeatDue = true;
      this.#notify();
    }, this.heartbeatMs);
    timer.unref();
    return timer;
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }
}

function shuttingDown(): ServiceError {
  return new ServiceError(
    "SHUTTING_DOWN",
    "the server is shutting down; resume from the last cursor on another replica",
  );
}

function invalidCursor(): ServiceError {
  return invalidArgument("start_after", "start_after is not a cursor of this feed");
}

/** Opaque to clients: the feed's identity (a cursor of another database is refused) and the place. */
export function encodeCursor(feedId: string, position: FeedPosition): string {
  const parts = feedPositionParts(position);
  if (parts === undefined) throw new Error(`not a feed position: ${position}`);
  return Buffer.from(`${CURSOR_PREFIX}${feedId}.${parts.transaction}.${parts.position}`).toString("base64url");
}

/**
 * The place a cursor carries. A cursor issued before places carried transaction ids ("f1.", a
 * dense position N) names the event at position N, which kept its position with transaction id 0.
 */
function decodeCursor(cursor: string, feedId: string): FeedPosition {
  const text = Buffer.from(cursor, "base64url").toString("utf8");
  let position: FeedPosition;
  let canonical: string;
  if (text.startsWith(`${CURSOR_PREFIX}${feedId}.`)) {
    const [transaction = "", number = "", ...rest] = text.slice(`${CURSOR_PREFIX}${feedId}.`.length).split(".");
    if (rest.length > 0 || !/^\d{1,20}$/.test(transaction) || !/^\d{1,15}$/.test(number)) throw invalidCursor();
    position = feedPosition(transaction, number);
    canonical = encodeCursor(feedId, position);
  } else if (text.startsWith(`${CURSOR_PREFIX_V1}${feedId}.`)) {
    const digits = text.slice(`${CURSOR_PREFIX_V1}${feedId}.`.length);
    if (!/^\d{1,15}$/.test(digits) || !Number.isSafeInteger(Number(digits))) throw invalidCursor();
    position = feedPosition(0, digits);
    canonical = Buffer.from(`${CURSOR_PREFIX_V1}${feedId}.${Number(digits)}`).toString("base64url");
  } else {
    throw invalidCursor();
  }
  // base64url decoding ignores stray characters, and digits may carry leading zeros: accept only
  // the exact text this feed issued.
  if (feedPositionParts(position) === undefined || canonical !== cursor) throw invalidCursor();
  return position;
}
