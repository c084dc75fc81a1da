// Paging of ListConnections and ListConnectionEvents: newest (connections) or oldest (events)
// first, no duplicates, no gaps, exact counts, an empty next_page_token on the last page, tokens
// bound to their filters, and the page size rules (0 -> 50, above 500 -> 500, negative refused).

import { expect, it } from "vitest";
import { type Connection, Connection_State, ConnectionEvent_Type } from "../../gen/connections/v1/connection_pb.js";
import {
  ListConnectionsRequest_Direction as Direction,
  type ListConnectionsRequest,
} from "../../gen/connections/v1/connection_service_pb.js";
import { connect, DATABASE_POOL_SIZE, mapConcurrently, ms, present, type StateName } from "../support/fixtures.js";
import { describeE2E, expectInvalidArgument, registerOrganizations, type Session } from "../support/service.js";

type ListFilters = Pick<ListConnectionsRequest, "direction" | "states">;

/** Follows next_page_token to the end, checking the shape of every page; resolves with the pages. */
async function walk(session: Session, filters: Partial<ListFilters>, pageSize: number): Promise<Connection[][]> {
  const pages: Connection[][] = [];
  let pageToken = "";
  for (;;) {
    const page = await session.listConnections({ ...filters, pageSize, pageToken });
    pages.push(page.connections);
    if (page.nextPageToken === "") break;
    expect(page.connections, "a page before the last is full").toHaveLength(pageSize);
    pageToken = page.nextPageToken;
    if (pages.length > 200) throw new Error("paging does not end");
  }
  expect(pages.at(-1)?.length ?? 0).toBeLessThanOrEqual(pageSize);
  return pages;
}

const ids = (connections: readonly Connection[]) => connections.map((connection) => connection.id);

describeE2E("paging", (e2e) => {
  it("pages 23 connections in both directions and several states, newest first", async () => {
    const client = e2e.client();
    const [org = "", ...others] = await registerOrganizations(client, 24, "org_pg");
    // Created oldest first: even ones outbound (org is the source), odd ones inbound.
    const created: { connection: Connection; outbound: boolean; state: StateName }[] = [];
    for (const [index, other] of others.entries()) {
      const outbound = index % 2 === 0;
      const state = (["ACTIVE", "PENDING", "INACTIVE"] as const)[index % 3] ?? "PENDING";
      const connection = outbound
        ? await connect(client, org, other, { state })
        : await connect(client, other, org, { state });
      created.push({ connection, outbound, state });
    }
    const newestFirst = [...created].reverse();
    const expectIds = (predicate: (entry: (typeof created)[number]) => boolean) =>
      newestFirst.filter(predicate).map((entry) => entry.connection.id);
    const session = e2e.as("api-gateway", org);

    const cases: { filters: Partial<ListFilters>; expected: string[]; pages: number[] }[] = [
      { filters: {}, expected: expectIds(() => true), pages: [5, 5, 5, 5, 3] },
      { filters: { direction: Direction.UNSPECIFIED }, expected: expectIds(() => true), pages: [5, 5, 5, 5, 3] },
      { filters: { direction: Direction.OUTBOUND }, expected: expectIds((e) => e.outbound), pages: [5, 5, 2] },
      { filters: { direction: Direction.INBOUND }, expected: expectIds((e) => !e.outbound), pages: [5, 5, 1] },
      {
        filters: { states: [Connection_State.ACTIVE] },
        expected: expectIds((e) => e.state === "ACTIVE"),
        pages: [5, 3],
      },
      {
        filters: { direction: Direction.OUTBOUND, states: [Connection_State.PENDING, Connection_State.INACTIVE] },
        expected: expectIds((e) => e.outbound && e.state !== "ACTIVE"),
        pages: [5, 3],
      },
      {
        filters: { direction: Direction.INBOUND, states: [Connection_State.INACTIVE] },
        expected: expectIds((e) => !e.outbound && e.state === "INACTIVE"),
        pages: [3],
      },
      {
        filters: { states: [Connection_State.ACTIVE, Connection_State.PENDING, Connection_State.INACTIVE] },
        expected: expectIds(() => true),
        pages: [5, 5, 5, 5, 3],
      },
    ];
    for (const { filters, expected, pages } of cases) {
      const walked = await walk(session, filters, 5);
      const label = JSON.stringify(filters);
      expect(
        walked.map((page) => page.length),
        label,
      ).toEqual(pages);
      const all = ids(walked.flat());
      expect(new Set(all).size, `${label}: no duplicates`).toBe(all.length);
      expect(all, `${label}: newest first, no gaps`).toEqual(expected);
    }

    // The pages carry the Connections as they are now, the same as GetConnection.
    const everything = (await walk(session, {}, 5)).flat();
    for (const listed of everything) {
      expect((await session.getConnection({ id: listed.id })).connection).toEqual(listed);
    }
    const current = new Map(created.map((entry) => [entry.connection.id, entry.connection]));
    for (const listed of everything) expect(listed).toEqual(current.get(listed.id));

    // A page size that equals the count: one page, and it is the last.
    const exact = await session.listConnections({ pageSize: 23 });
    expect(exact.connections).toHaveLength(23);
    expect(exact.nextPageToken).toBe("");
    // 0 means 50, which holds all 23.
    const defaulted = await session.listConnections({});
    expect(ids(defaulted.connections)).toEqual(expectIds(() => true));
    expect(defaulted.nextPageToken).toBe("");

    // The page size may change from page to page.
    const first = await session.listConnections({ pageSize: 4 });
    const second = await session.listConnections({ pageSize: 9, pageToken: first.nextPageToken });
    expect([...ids(first.connections), ...ids(second.connections)]).toEqual(expectIds(() => true).slice(0, 13));

    // Keyset: a Connection made while paging does not shift the later pages.
    const page1 = await session.listConnections({ pageSize: 10 });
    const [late = ""] = await registerOrganizations(client, 1, "org_pg");
    const newest = await connect(client, org, late);
    let token = page1.nextPageToken;
    const continued: string[] = [];
    while (token !== "") {
      const page = await session.listConnections({ pageSize: 10, pageToken: token });
      continued.push(...ids(page.connections));
      token = page.nextPageToken;
    }
    expect([...ids(page1.connections), ...continued]).toEqual(expectIds(() => true));
    expect(ids((await session.listConnections({ pageSize: 1 })).connections)).toEqual([newest.id]);
  });

  it("binds a token to its filters and refuses a negative page size", async () => {
    const client = e2e.client();
    const [org = "", a = "", b = "", c = ""] = await registerOrganizations(client, 4, "org_pg");
    await connect(client, org, a, { state: "ACTIVE" });
    await connect(client, b, org, { state: "ACTIVE" });
    await connect(client, org, c, { state: "ACTIVE" });
    const session = e2e.as("dashboard-bff", org);

    const outbound = await session.listConnections({ pageSize: 1, direction: Direction.OUTBOUND });
    expect(outbound.nextPageToken).not.toBe("");
    await expectInvalidArgument(
      session.listConnections({ pageSize: 1, direction: Direction.INBOUND, pageToken: outbound.nextPageToken }),
      "page_token",
    );
    await expectInvalidArgument(
      session.listConnections({ pageSize: 1, pageToken: outbound.nextPageToken }),
      "page_token",
    );
    const active = await session.listConnections({ pageSize: 1, states: [Connection_State.ACTIVE] });
    expect(active.nextPageToken).not.toBe("");
    for (const states of [[], [Connection_State.PENDING], [Connection_State.ACTIVE, Connection_State.INACTIVE]]) {
      await expectInvalidArgument(
        session.listConnections({ pageSize: 1, states, pageToken: active.nextPageToken }),
        "page_token",
      );
    }
    // The same filters go on.
    const next = await session.listConnections({
      pageSize: 5,
      states: [Connection_State.ACTIVE],
      pageToken: active.nextPageToken,
    });
    expect(next.connections).toHaveLength(2);
    expect(next.nextPageToken).toBe("");

    await expectInvalidArgument(session.listConnections({ pageSize: -1 }), "page_size");
    await expectInvalidArgument(
      session.listConnections({ pageSize: -1, pageToken: active.nextPageToken }),
      "page_size",
    );
  });

  it("pages the events of a connection oldest first, bound to that connection", async () => {
    const client = e2e.client();
    const [source = "", destination = "", third = ""] = await registerOrganizations(client, 3, "org_pg");
    const connection = await connect(client, source, destination);
    const other = await connect(client, source, third);
    const bff = e2e.as("dashboard-bff", source);
    for (let round = 0; round < 4; round++) {
      await bff.deactivateConnection({ id: connection.id, reason: `round ${round}` });
      await bff.reactivateConnection({ id: connection.id });
    }
    const pages: string[][] = [];
    const events = [];
    let pageToken = "";
    do {
      const page = await bff.listConnectionEvents({ connectionId: connection.id, pageSize: 2, pageToken });
      pages.push(page.events.map((event) => event.id));
      events.push(...page.events);
      if (page.nextPageToken !== "") expect(page.events).toHaveLength(2);
      pageToken = page.nextPageToken;
    } while (pageToken !== "" && pages.length < 50);
    expect(pages.map((page) => page.length)).toEqual([2, 2, 2, 2, 1]);
    expect(new Set(events.map((event) => event.id)).size).toBe(9);
    expect(events.map((event) => ConnectionEvent_Type[event.type])).toEqual([
      "CREATED",
      ...Array.from({ length: 4 }, () => ["DEACTIVATED", "REACTIVATED"]).flat(),
    ]);
    expect(events.filter((event) => event.reason !== "").map((event) => event.reason)).toEqual([
      "round 0",
      "round 1",
      "round 2",
      "round 3",
    ]);
    const all = await bff.listConnectionEvents({ connectionId: connection.id });
    expect(all.events).toEqual(events);

    const first = await bff.listConnectionEvents({ connectionId: connection.id, pageSize: 1 });
    await expectInvalidArgument(
      bff.listConnectionEvents({ connectionId: other.id, pageSize: 1, pageToken: first.nextPageToken }),
      "page_token",
    );
    await expectInvalidArgument(bff.listConnections({ pageToken: first.nextPageToken }), "page_token");
    await expectInvalidArgument(bff.listConnectionEvents({ connectionId: connection.id, pageSize: -1 }), "page_size");
    // The other party pages the same trail with the same tokens' meaning.
    const fromDestination = await e2e
      .as("api-gateway", destination)
      .listConnectionEvents({ connectionId: connection.id, pageSize: 1, pageToken: first.nextPageToken });
    expect(fromDestination.events.map((event) => event.id)).toEqual([pages[0]?.[1]]);
  });
});

describeE2E(
  "page size limits",
  (e2e) => {
    it("uses 50 for page_size 0 and caps 1000 at 500, for connections and for events", {
      timeout: 120_000,
    }, async () => {
      const client = e2e.client();
      const [org = ""] = await registerOrganizations(client, 1, "org_cap");
      const destinations = await mapConcurrently(
        Array.from({ length: 501 }, (_, index) => index),
        DATABASE_POOL_SIZE,
        async () => {
          const [destination = ""] = await registerOrganizations(client, 1, "org_cap");
          return destination;
        },
      );
      const bff = e2e.as("dashboard-bff", org);
      const made = await mapConcurrently(destinations, DATABASE_POOL_SIZE, async (destination) =>
        present(
          (await bff.createConnection({ destinationOrganizationId: destination, scopes: ["account.read"] })).connection,
        ),
      );
      expect(new Set(made.map((connection) => connection.id)).size).toBe(501);

      const defaulted = await bff.listConnections({ pageSize: 0 });
      expect(defaulted.connections).toHaveLength(50);
      expect(defaulted.nextPageToken).not.toBe("");
      const capped = await bff.listConnections({ pageSize: 1000 });
      expect(capped.connections).toHaveLength(500);
      expect(capped.nextPageToken).not.toBe("");
      const last = await bff.listConnections({ pageSize: 1000, pageToken: capped.nextPageToken });
      expect(last.connections).toHaveLength(1);
      expect(last.nextPageToken).toBe("");
      const seen = new Set([...ids(capped.connections), ...ids(last.connections)]);
      expect(seen).toEqual(new Set(made.map((connection) => connection.id)));
      const exact = await bff.listConnections({ pageSize: 500, direction: Direction.OUTBOUND });
      expect(exact.connections).toEqual(capped.connections);

      // Events: 1 CREATED + 50 transitions.
      const connection = present(made[0]);
      for (let round = 0; round < 25; round++) {
        await bff.deactivateConnection({ id: connection.id });
        await bff.reactivateConnection({ id: connection.id });
      }
      const events = await bff.listConnectionEvents({ connectionId: connection.id, pageSize: 0 });
      expect(events.events).toHaveLength(50);
      expect(events.nextPageToken).not.toBe("");
      const rest = await bff.listConnectionEvents({ connectionId: connection.id, pageToken: events.nextPageToken });
      expect(rest.events).toHaveLength(1);
      expect(rest.nextPageToken).toBe("");
      const all = await bff.listConnectionEvents({ connectionId: connection.id, pageSize: 1000 });
      expect(all.events).toHaveLength(51);
      expect(all.nextPageToken).toBe("");
      expect(all.events).toEqual([...events.events, ...rest.events]);
    });
  },
  { kinds: ["grpc-js"] },
);

describeE2E(
  "ListConnections order under concurrent creates",
  (e2e) => {
    it("lists 120 connections created concurrently newest first by create_time as returned, each once", async () => {
      const client = e2e.client();
      const [org = "", ...others] = await registerOrganizations(client, 121, "org_cc");
      // As many in flight as the database pool serves: on PostgreSQL their clocks are read in one
      // order and their rows committed in another.
      const made = await mapConcurrently(others, DATABASE_POOL_SIZE, async (other, index) =>
        index % 2 === 0 ? (await connect(client, org, other)).id : (await connect(client, other, org)).id,
      );
      const listed = (await walk(e2e.as("api-gateway", org), {}, 7)).flat();
      expect(new Set(ids(listed))).toEqual(new Set(made));
      expect(listed).toHaveLength(made.length);
      const times = listed.map((connection) => ms(connection.createTime));
      for (let index = 1; index < times.length; index++) {
        expect(times[index], `position ${index}`).toBeLessThanOrEqual(times[index - 1] ?? 0);
      }
    });
  },
  { kinds: ["grpc-js"] },
);
