// How the token service follows the change feed (WatchConnectionEvents, docs/API.md "The change
// feed") to revoke share tokens the moment a Connection stops being ACTIVE or loses a scope, instead
// of waiting for them to expire. Over the gRPC protocol with connect-es (createGrpcTransport).
//
// The cursor is the follower's only state. It is saved after every message (heartbeats included)
// once that message's events have been handled, so a restart resumes exactly where handling
// stopped: an event is handled at least once, and revoking twice is harmless. The first start,
// with no saved cursor, begins at now (start_at_now): tokens issued before then were checked then.
// A stream that ends UNAVAILABLE (a replica shutting down), DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED
// (WATCHER_TOO_SLOW, TOO_MANY_WATCHERS) is resumed from the last cursor with jittered backoff; any
// other error (a rejected cursor, a wrong token) is not one that a retry would fix, and is thrown.

import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Connection_State, type ConnectionEvent } from "../../gen/connections/v1/connection_pb.js";
import { ConnectionService } from "../../gen/connections/v1/connection_service_pb.js";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";

/** Where the cursor survives the follower's restarts (a file, a database row). */
export interface CursorStore {
  load(): Promise<string | undefined>;
  save(cursor: string): Promise<void>;
}

/** Share tokens to revoke because of one event. */
export interface Revocation {
  readonly connectionId: string;
  /** The scopes whose tokens must go: all of them when the Connection stopped being ACTIVE. */
  readonly scopes: readonly string[];
  readonly event: ConnectionEvent;
}

export interface FollowOptions {
  /** e.g. http://connections:8080 (h2c) or https://connections:8443 */
  readonly baseUrl: string;
  /** The token service's bearer token: it sees every Connection's events. */
  readonly token: string;
  readonly cursors: CursorStore;
  /** Revokes the tokens; resolves once done (the cursor moves past the event only then). */
  readonly revoke: (revocation: Revocation) => Promise<void>;
  /** Stops following: the returned promise then resolves. */
  readonly signal: AbortSignal;
  /** A deadline per stream, so a long-lived follower moves between replicas now and then. */
  readonly streamDeadlineMs?: number;
  readonly initialBackoffMs?: number;
  readonly maxBackoffMs?: number;
  /** Told when a stream's first message arrives (with the cursor it started after, "" at now). */
  readonly onStream?: (startAfter: string) => void;
  /** Told before each resume, with why the stream ended and the cursor it resumes after. */
  readonly onResume?: (error: ConnectError, startAfter: string, backoffMs: number) => void;
}

/** What an event means for share tokens, or undefined when nothing issued before it is wrong now. */
export function revocationFor(event: ConnectionEvent): Revocation | undefined {
  const { connectionId } = event;
  // Deactivated, or widened (back to PENDING until the destination consents): every token goes.
  if (event.fromState === Connection_State.ACTIVE && event.toState !== Connection_State.ACTIVE) {
    const scopes = event.previousScopes.length > 0 ? event.previousScopes : event.scopes;
    return { connectionId, scopes, event };
  }
  // Narrowed (applies at once, in every state): the removed scopes' tokens go.
  const removed = event.previousScopes.filter((scope) => !event.scopes.includes(scope));
  return removed.length > 0 ? { connectionId, scopes: removed, event } : undefined;
}

/** A stream end that resuming from the cursor recovers from. */
function resumable(error: ConnectError): boolean {
  if (error.code === Code.Unavailable || error.code === Code.DeadlineExceeded) return true;
  const reason = error.findDetails(ErrorInfoSchema)[0]?.reason;
  return error.code === Code.ResourceExhausted && (reason === "WATCHER_TOO_SLOW" || reason === "TOO_MANY_WATCHERS");
}

/** Follows the feed until `signal` aborts; rejects on an error that resuming would not fix. */
export async function followChangeFeed(options: FollowOptions): Promise<void> {
  // HTTP/2 pings find a connection that died silently; the feed's heartbeats keep it busy anyway.
  const transport = createGrpcTransport({ baseUrl: options.baseUrl, pingIntervalMs: 30_000 });
  const client = createClient(ConnectionService, transport);
  const headers = { authorization: `Bearer ${options.token}` };
  const { signal } = options;
  let cursor = (await options.cursors.load()) ?? "";
  let failures = 0;
  while (!signal.aborted) {
    let ended: ConnectError;
    try {
      const request = cursor === "" ? { startAtNow: true } : { startAfter: cursor };
      const stream = client.watchConnectionEvents(request, { headers, signal, timeoutMs: options.streamDeadlineMs });
      let first = true;
      for await (const message of stream) {
        if (first) options.onStream?.(cursor);
        first = false;
        for (const event of message.events) {
          const revocation = revocationFor(event);
          if (revocation !== undefined) await options.revoke(revocation);
        }
        await options.cursors.save(message.cursor);
        cursor = message.cursor;
        failures = 0;
      }
      ended = new ConnectError("the server ended the stream", Code.Unavailable);
    } catch (error) {
      if (signal.aborted) return;
      ended = ConnectError.from(error);
      if (!resumable(ended)) throw ended;
    }
    failures++;
    const ceiling = Math.min(options.maxBackoffMs ?? 5_000, (options.initialBackoffMs ?? 100) * 2 ** (failures - 1));
    const backoffMs = Math.round(Math.random() * ceiling);
    options.onResume?.(ended, cursor, backoffMs);
    await sleep(backoffMs, undefined, { signal }).catch(() => {});
  }
}
