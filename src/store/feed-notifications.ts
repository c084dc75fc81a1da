// Wakes this process's change-feed readers when another replica commits an event, and tells the
// other replicas when this one did: a dedicated PostgreSQL connection (not one of the pool's, which
// must stay free for RPCs) LISTENs on the feed's channel and sends the NOTIFY that announces this
// process's commits. It LISTENs only while this process has a reader (a watcher): a replica
// without one would otherwise be woken by every other replica's NOTIFY for nothing (under writes
// spread over three replicas, about as many wake-ups as its own calls made). The NOTIFY goes out
// after the commit, at most one every ANNOUNCE_SPACING_MS (the first at once, the next for every
// write committed since): inside the writing transaction it would make every commit of every
// replica queue for PostgreSQL's notify lock, and one per write cost a replica under load about a
// third as much CPU as the writes' own statements (a send(2) of its own, a read at every replica,
// a transaction at the server). Notifications are a latency hint,
// never the source of truth: one lost while the connection was down only delays delivery until the
// feed's next periodic poll, and every (re)connection wakes the readers so that they look at once.

import pg from "pg";
import type { Logger } from "pino";
import { FEED_CHANNEL } from "./migrations.js";

const FIRST_RETRY_MS = 100;
const MAX_RETRY_MS = 5_000;
const CONNECT_TIMEOUT_MS = 2_000;
/** After a NOTIFY, the next waits this long: it then tells of every write committed meanwhile. */
export const ANNOUNCE_SPACING_MS = 5;

export class FeedListener {
  readonly #listeners = new Set<() => void>();
  #client: pg.Client | undefined;
  #retryMs = FIRST_RETRY_MS;
  #retryTimer: NodeJS.Timeout | undefined;
  #closed = false;
  /** A write committed that no NOTIFY has told of yet. */
  #unannounced = false;
  /** A NOTIFY is on its way. */
  #announcing = false;
  /** Runs until the next NOTIFY may go out. */
  #spacing: NodeJS.Timeout | undefined;
  #connecting = false;
  /** What PostgreSQL was last told for this connection: LISTEN (true) or UNLISTEN. */
  #listening = false;

  constructor(
    private readonly url: string,
    private readonly logger: Logger | undefined,
  ) {}

  /**
   * Calls `listener` on every notification, after every (re)connection and once the LISTEN it
   * needed is in force (what committed before that is then read).
   */
  subscribe(listener: () => void): () => void {
    this.#listeners.add(listener);
    if (this.#client === undefined && this.#retryTimer === undefined && !this.#connecting) void this.#connect();
    else this.#listenWhileSubscribed();
    return () => {
      this.#listeners.delete(listener);
      this.#listenWhileSubscribed();
    };
  }

  /** Tells every replica that this process committed a write (coalesced; connects if need be). */
  announce(): void {
    if (this.#closed) return;
    this.#unannounced = true;
    this.#sendAnnouncement();
  }

  /** The NOTIFY for the writes not yet announced, unless one is on its way or was sent just now. */
  #sendAnnouncement(): void {
    if (!this.#unannounced || this.#announcing || this.#spacing !== undefined || this.#closed) return;
    const client = this.#client;
    if (client === undefined) {
      // Sent once connected.
      if (this.#retryTimer === undefined && !this.#connecting) void this.#connect();
      return;
    }
    this.#unannounced = false;
    this.#announcing = true;
    this.#spacing = setTimeout(() => {
      this.#spacing = undefined;
      this.#sendAnnouncement();
    }, ANNOUNCE_SPACING_MS);
    this.#spacing.unref();
    client
      .query(`notify ${FEED_CHANNEL}`)
      .catch((error: unknown) => this.logger?.debug({ err: error }, "change feed notification not sent"))
      .finally(() => {
        this.#announcing = false;
        this.#sendAnnouncement();
      });
  }

  /** True while the connection is up and LISTENs (for tests). */
  get listening(): boolean {
    return this.#client !== undefined && this.#listening;
  }

  /** Drops the connection as if the network had failed (tests); it reconnects with backoff. */
  disconnectForTest(): void {
    this.#client?.emit("error", new Error("disconnected for a test"));
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#spacing);
    const client = this.#client;
    this.#client = undefined;
    await client?.end().catch(() => undefined);
  }

  async #connect(): Promise<void> {
    this.#connecting = true;
    try {
      await this.#connectOnce();
    } finally {
      this.#connecting = false;
    }
  }

  async #connectOnce(): Promise<void> {
    const client = new pg.Client({
      connectionString: this.url,
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      keepAlive: true,
      application_name: "connections-feed",
    });
    let failed = false;
    const fail = (error: unknown) => {
      if (failed) return;
      failed = true;
      if (this.#client === client) this.#client = undefined;
      void client.end().catch(() => undefined);
      if (this.#closed) return;
      this.logger?.warn({ err: error, retryMs: this.#retryMs }, "change feed listener lost; reconnecting");
      this.#retryTimer = setTimeout(() => {
        this.#retryTimer = undefined;
        void this.#connect();
      }, this.#retryMs);
      this.#retryTimer.unref();
      this.#retryMs = Math.min(this.#retryMs * 2, MAX_RETRY_MS);
    };
    client.on("error", fail);
    client.on("end", () => fail(new Error("connection ended")));
    // Not its own NOTIFYs: this process's readers were told of its writes when they committed.
    client.on("notification", (message) => {
      if (message.processId !== (client as unknown as { processID?: number }).processID) this.#wake();
    });
    try {
      await client.connect();
    } catch (error) {
      fail(error);
      return;
    }
    if (this.#closed) {
      await client.end().catch(() => undefined);
      return;
    }
    this.#client = client;
    this.#listening = false;
    this.#retryMs = FIRST_RETRY_MS;
    // LISTEN (when there is a reader) goes before the NOTIFY on the connection; then anything
    // committed while no one listened is read, and announced if it was committed here.
    this.#listenWhileSubscribed();
    this.#sendAnnouncement();
  }

  /** LISTENs while there is a listener, UNLISTENs when the last has gone (queued in order on the connection). */
  #listenWhileSubscribed(): void {
    const client = this.#client;
    const wanted = this.#listeners.size > 0;
    if (client === undefined || wanted === this.#listening) return;
    this.#listening = wanted;
    // A failure here is the connection's ('error' or 'end' reconnects, and LISTENs again).
    client.query(`${wanted ? "listen" : "unlisten"} ${FEED_CHANNEL}`).then(
      () => {
        if (wanted && this.#client === client) this.#wake();
      },
      () => undefined,
    );
  }

  #wake(): void {
    for (const listener of this.#listeners) listener();
  }
}
