// WatchConnectionEvents end to end, on every database and through connect-node (gRPC and Connect
// over HTTP/1.1) and @grpc/grpc-js: commit order, resuming exactly once from any cursor,
// visibility, heartbeats, cursor validation, the watcher cap, the slow-consumer rule, the client's
// deadline (not the unary cap) and shutdown.

import http2 from "node:http2";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { afterAll, beforeAll, expect, it } from "vitest";
import { Connection_State, ConnectionEvent_Type } from "../../gen/connections/v1/connection_pb.js";
import {
  WatchConnectionEventsRequestSchema,
  WatchConnectionEventsResponseSchema,
} from "../../gen/connections/v1/connection_service_pb.js";
import { EVENTS_PER_MESSAGE, encodeCursor, MAX_QUEUED_EVENTS } from "../../src/app/feed.js";
import { feedPosition } from "../../src/store/store.js";
import { acceptanceDatabases, describeEachDatabase } from "../support/databases.js";
import { connect, present } from "../support/fixtures.js";
import { type RpcClient, registerOrganizations, startTestService, type TestService } from "../support/service.js";
import { Code, WATCH_CLIENT_KINDS, type WatchClient, watchClient } from "../support/watch.js";
import { envelope, h2Open } from "../support/wire.js";

/** The messages of a gRPC response body (5-byte prefixed frames). */
function grpcMessages(body: Buffer): Buffer[] {
  const messages: Buffer[] = [];
  for (let offset = 0; offset + 5 <= body.length; ) {
    const length = body.readUInt32BE(offset + 1);
    messages.push(body.subarray(offset + 5, offset + 5 + length));
    offset += 5 + length;
  }
  return messages;
}

const HEARTBEAT_MS = 300;

describeEachDatabase(
  "WatchConnectionEvents",
  (database) => {
    let service: TestService;
    let client: RpcClient;
    const watchers: WatchClient[] = [];
    const watcher = (kind: (typeof WATCH_CLIENT_KINDS)[number]) => {
      const made = watchClient(kind, service.address);
      watchers.push(made);
      return made;
    };

    beforeAll(async () => {
      service = await startTestService(database);
      client = service.client("grpc-js");
    }, 60_000);

    afterAll(async () => {
      for (const made of watchers) made.close();
      await service?.close();
    });

    /** A Connection taken through CREATED, ACTIVATED, DEACTIVATED; returns its id. */
    async function threeEvents(source: string, destination: string): Promise<string> {
      const connection = await connect(client, source, destination, { state: "ACTIVE" });
      await client
        .as({ caller: "dashboard-bff", organizationId: source })
        .deactivateConnection({ id: connection.id, reason: "test" });
      return connection.id;
    }

    for (const kind of WATCH_CLIENT_KINDS) {
      it(`delivers transitions in commit order from now, and resumes exactly once (${kind})`, async () => {
        const [source = "", destination = ""] = await registerOrganizations(client, 2);
        const stream = watcher(kind).watch({ startAtNow: true }, { caller: "token-service" });
        const first = await stream.next();
        expect(first.events).toEqual([]);
        expect(first.cursor).not.toBe("");

        const id = await threeEvents(source, destination);
        const { events, cursor } = await stream.events(3);
        expect(events.map((event) => [event.connectionId, event.type, event.toState])).toEqual([
          [id, ConnectionEvent_Type.CREATED, Connection_State.PENDING],
          [id, ConnectionEvent_Type.ACTIVATED, Connection_State.ACTIVE],
          [id, ConnectionEvent_Type.DEACTIVATED, Connection_State.INACTIVE],
        ]);
        expect(events[2]?.reason).toBe("test");
        stream.cancel();

        // From the first cursor: the same three again, exactly once; from the last: nothing until new.
        const again = watcher(kind).watch({ startAfter: first.cursor }, { caller: "token-service" });
        expect((await again.events(3)).events.map((event) => event.id)).toEqual(events.map((event) => event.id));
        again.cancel();
        const caughtUp = watcher(kind).watch({ startAfter: cursor }, { caller: "token-service" });
        const heartbeat = await caughtUp.next();
        expect(heartbeat).toMatchObject({ events: [], cursor });
        await client.as({ caller: "dashboard-bff", organizationId: source }).reactivateConnection({ id });
        const next = await caughtUp.events(1);
        expect(next.events.map((event) => event.type)).toEqual([ConnectionEvent_Type.REACTIVATED]);
        caughtUp.cancel();
      });
    }

    it("from the start, replays every event ever recorded, in order, once", async () => {
      const [source = "", destination = ""] = await registerOrganizations(client, 2);
      const id = await threeEvents(source, destination);
      const stream = watcher("grpc-js").watch({}, { caller: "token-service" });
      const seen: string[] = [];
      for (;;) {
        const message = await stream.next();
        seen.push(...message.events.map((event) => event.id));
        if (
          message.events.some((event) => event.connectionId === id && event.type === ConnectionEvent_Type.DEACTIVATED)
        )
          break;
      }
      stream.cancel();
      expect(new Set(seen).size).toBe(seen.length);
      const listed = await client
        .as({ caller: "api-gateway", organizationId: source })
        .listConnectionEvents({ connectionId: id });
      expect(seen.slice(-3)).toEqual(listed.events.map((event) => event.id));
    });

    it("shows a party only its Connections' events, and the token service every one", async () => {
      const [a = "", b = "", c = ""] = await registerOrganizations(client, 3);
      const asA = watcher("connect-grpc").watch({ startAtNow: true }, { caller: "dashboard-bff", organizationId: a });
      const asC = watcher("grpc-js").watch({ startAtNow: true }, { caller: "api-gateway", organizationId: c });
      const all = watcher("grpc-js").watch({ startAtNow: true }, { caller: "token-service" });
      for (const stream of [asA, asC, all]) await stream.next();
      const notA = await connect(client, b, c);
      const withA = await connect(client, b, a);
      expect((await asA.events(1)).events.map((event) => event.connectionId)).toEqual([withA.id]);
      expect((await asC.events(1)).events.map((event) => event.connectionId)).toEqual([notA.id]);
      expect((await all.events(2)).events.map((event) => event.connectionId)).toEqual([notA.id, withA.id]);
      for (const stream of [asA, asC, all]) stream.cancel();
    });

    it("needs x-organization-id except from the token service", async () => {
      const stream = watcher("grpc-js").watch({ startAtNow: true }, { caller: "dashboard-bff" });
      const error = await stream.end();
      expect(error).toMatchObject({ code: Code.InvalidArgument, reason: "ORGANIZATION_HEADER_REQUIRED" });
    });

    it("refuses a garbage, foreign or future cursor, and both starts at once", async () => {
      const stream = watcher("grpc-js").watch({ startAtNow: true }, { caller: "token-service" });
      const { cursor } = await stream.next();
      stream.cancel();
      // f2.<feed id>.<transaction id>.<position>
      const [, feedId = "", transaction = "", position = ""] = Buffer.from(cursor, "base64url").toString().split(".");
      const beyond = Buffer.from(`f2.${feedId}.${transaction}.${Number(position) + 1_000_000}`).toString("base64url");
      for (const startAfter of [
        "garbage",
        "",
        encodeCursor("someOtherFeed", feedPosition(transaction, position)),
        beyond,
        `${cursor}x`,
      ]) {
        const request = startAfter === "" ? { startAfter: cursor, startAtNow: true } : { startAfter };
        const refused = watcher("grpc-js").watch(request, { caller: "token-service" });
        const error = await refused.end();
        expect(error, startAfter).toMatchObject({ code: Code.InvalidArgument, metadata: { field: "start_after" } });
      }
    });

    it("ends a consumer that stops reading with WATCHER_TOO_SLOW, and it resumes from its last cursor", async () => {
      const [source = "", ...destinations] = await registerOrganizations(client, 14);
      const connections = await Promise.all(destinations.map((destination) => connect(client, source, destination)));
      // A raw HTTP/2 stream that stops reading after the first message: nothing consumes its data,
      // so flow control holds the server back (a client library may keep reading into its own
      // buffers while its stream object is paused, which would hide the slow consumer).
      const session = http2.connect(`http://${service.address}`);
      try {
        const request = create(WatchConnectionEventsRequestSchema, { startAtNow: true });
        // The stream lives through every transition below: on PostgreSQL, whose event writes take
        // turns for the feed's commit order, that can take longer than h2Open's default 10 s.
        const { stream, answer } = h2Open(
          session,
          {
            path: "/connections.v1.ConnectionService/WatchConnectionEvents",
            headers: { "content-type": "application/grpc", te: "trailers", authorization: "Bearer dev-token-service" },
            body: envelope(toBinary(WatchConnectionEventsRequestSchema, request)),
          },
          100_000,
        );
        stream.end();
        await new Promise<void>((resolve) => stream.once("data", () => resolve()));
        stream.pause();
        const gateway = client.as({ caller: "api-gateway", organizationId: source });
        let written = 0;
        const round = () =>
          Promise.all(
            connections.map(async ({ id }) => {
              await gateway.deactivateConnection({ id });
              await gateway.reactivateConnection({ id });
              written += 2;
            }),
          );
        // Until the stream's flow-control window is used up, so the server can send no more...
        while ((stream.state.localWindowSize ?? 0) > 0) await round();
        // ...then more than the transport may still hold (it takes a message only once the one
        // before was written) and the per-watcher queue together. Counted, not timed: the stream
        // must be read again soon after it was ended, and on a loaded machine writes are slow.
        const beyondWindow = written + MAX_QUEUED_EVENTS + 3 * EVENTS_PER_MESSAGE;
        while (written <= beyondWindow) await round();
        stream.resume();
        const ended = await answer;
        expect({ code: ended.code, reason: ended.errorInfo?.reason }).toEqual({
          code: Code.ResourceExhausted,
          reason: "WATCHER_TOO_SLOW",
        });
        const messages = grpcMessages(ended.body).map((bytes) =>
          fromBinary(WatchConnectionEventsResponseSchema, bytes),
        );
        const received = messages.flatMap((message) => message.events.map((event) => event.id));
        const cursor = present(messages.at(-1), "a message before the status").cursor;
        expect(received.length).toBeLessThan(written);
        // Resuming from the last cursor brings the rest, exactly once.
        const resumed = watcher("grpc-js").watch({ startAfter: cursor }, { caller: "token-service" });
        const rest = await resumed.events(written - received.length);
        resumed.cancel();
        const all = [...received, ...rest.events.map((event) => event.id)];
        expect(new Set(all).size).toBe(written);
      } finally {
        session.destroy();
      }
    }, 120_000);
  },
  acceptanceDatabases,
);

describeEachDatabase("WatchConnectionEvents limits and shutdown", (database) => {
  let service: TestService | undefined;
  let watch: WatchClient;

  beforeAll(async () => {
    // MAX_DEADLINE_MS is far below the stream's life: a unary cap would end the stream early.
    service = await startTestService(database, {
      MAX_WATCHERS: "2",
      MAX_DEADLINE_MS: "100",
      WATCH_HEARTBEAT_MS: String(HEARTBEAT_MS),
    });
    watch = watchClient("connect-grpc", service.address);
  }, 60_000);

  afterAll(async () => {
    watch?.close();
    await service?.close();
  });

  it("sends heartbeats with the current cursor, and outlives MAX_DEADLINE_MS until the client's deadline", async () => {
    // Room for ten heartbeats: three must arrive even when a loaded machine delays the first ones.
    const stream = watch.watch({ startAtNow: true }, { caller: "token-service", timeoutMs: 10 * HEARTBEAT_MS });
    const first = await stream.next();
    // MAX_DEADLINE_MS is 100 here: a unary cap would have ended the stream before these.
    for (let beat = 0; beat < 3; beat++)
      expect(await stream.next()).toMatchObject({ events: [], cursor: first.cursor });
    const error = await stream.end();
    expect(error?.code).toBe(Code.DeadlineExceeded);
  });

  it("caps streams at MAX_WATCHERS and ends every stream with UNAVAILABLE at shutdown", async () => {
    if (service === undefined) throw new Error("no service");
    const streams = [0, 1].map(() => watch.watch({ startAtNow: true }, { caller: "token-service" }));
    for (const stream of streams) await stream.next();
    const refused = watch.watch({ startAtNow: true }, { caller: "token-service" });
    expect(await refused.end()).toMatchObject({ code: Code.ResourceExhausted, reason: "TOO_MANY_WATCHERS" });

    const closing = service.close();
    service = undefined;
    for (const stream of streams) {
      expect(await stream.end()).toMatchObject({ code: Code.Unavailable, reason: "SHUTTING_DOWN" });
    }
    await closing;
  });
});

describeEachDatabase("WatchConnectionEvents and the maximum connection age", (database) => {
  let service: TestService | undefined;
  let watch: WatchClient | undefined;

  afterAll(async () => {
    watch?.close();
    await service?.close();
  });

  it("ends a stream with UNAVAILABLE when its connection ages out, before the forced close", async () => {
    service = await startTestService(database, { MAX_CONNECTION_AGE_MS: "500", MAX_CONNECTION_AGE_GRACE_MS: "60000" });
    watch = watchClient("connect-grpc", service.address);
    const stream = watch.watch({ startAtNow: true }, { caller: "token-service" });
    const { cursor } = await stream.next();
    expect(await stream.end()).toMatchObject({ code: Code.Unavailable, reason: "CONNECTION_MAX_AGE" });
    // The client resumes from its cursor on a new connection.
    const resumed = watch.watch({ startAfter: cursor }, { caller: "token-service" });
    expect((await resumed.next()).cursor).toBe(cursor);
    resumed.cancel();
  });
});
