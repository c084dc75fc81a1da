// One storage suite that every dialect must pass: what the application layer relies on.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { State } from "../../src/domain/connection.js";
import { AlreadyExistsError, type ConnectionRecord, type Direction, type Store } from "../../src/store/store.js";
import { createTestStore, describeEachDatabase, type TestStore } from "../support/databases.js";
import {
  answerRecord,
  connectionRecord,
  createdEvent,
  eventFor,
  newOrganization,
  transition,
  uniqueId,
} from "./fixtures.js";

async function rejectionOf(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error("expected a rejection");
}

async function expectAlreadyExists(promise: Promise<unknown>, conflict: AlreadyExistsError["conflict"]): Promise<void> {
  const error = await rejectionOf(promise);
  expect(error).toBeInstanceOf(AlreadyExistsError);
  const sentinel = error as AlreadyExistsError;
  expect(sentinel.conflict).toBe(conflict);
  // The driver's words stay in the cause, for the log; the message is ours.
  expect(sentinel.message).toBe(`already exists: ${conflict}`);
  expect(sentinel.cause).toBeInstanceOf(Error);
}

describeEachDatabase("Store", (database) => {
  let testStore: TestStore;
  let store: Store;

  beforeAll(async () => {
    testStore = await createTestStore(database);
    store = testStore.store;
  }, 30_000);

  afterAll(async () => {
    await testStore?.dispose();
  });

  async function create(connection: ConnectionRecord): Promise<ConnectionRecord> {
    await store.createConnection(connection, createdEvent(connection));
    return connection;
  }

  async function advance(connection: ConnectionRecord, to: State): Promise<ConnectionRecord> {
    const { next, event } = transition(connection, to);
    expect(await store.saveTransition(next, event)).toBe(true);
    return next;
  }

  it("answers ping and reports its connections", async () => {
    await store.ping();
    const stats = store.poolStats();
    expect(stats.total).toBeGreaterThanOrEqual(stats.idle);
    expect(stats.waiting).toBeGreaterThanOrEqual(0);
  });

  describe("organizations", () => {
    it("creates, gets and knows an organization", async () => {
      const organization = { id: uniqueId("org"), name: "Acme", createTime: new Date("2024-02-29T12:34:56.789Z") };
      expect(await store.createOrganization(organization)).toEqual(organization);
      expect(await store.getOrganization(organization.id)).toEqual(organization);
      expect(await store.organizationExists(organization.id)).toBe(true);
    });

    it("answers undefined and false for an unknown organization", async () => {
      const id = uniqueId("org");
      expect(await store.getOrganization(id)).toBeUndefined();
      expect(await store.organizationExists(id)).toBe(false);
    });

    it("refuses a second organization with the same id", async () => {
      const id = await newOrganization(store);
      await expectAlreadyExists(
        store.createOrganization({ id, name: "Again", createTime: new Date() }),
        "organization",
      );
      expect((await store.getOrganization(id))?.name).toBe(`Organization ${id}`);
    });
  });

  describe("connections", () => {
    it("creates a connection and finds it by id and pair", async () => {
      const [source, destination] = [await newOrganization(store), await newOrganization(store)];
      const connection = await create(connectionRecord(source, destination, { createRequestId: uniqueId("req") }));
      expect(await store.getConnection(connection.id)).toEqual(connection);
      expect(await store.findConnectionByPair(source, destination)).toEqual(connection);
      expect(await store.findConnectionByPair(destination, source)).toBeUndefined();
      expect(await store.getConnection(uniqueId("cxn"))).toBeUndefined();
    });

    it("round-trips timestamps to the millisecond and keeps unset ones undefined", async () => {
      const [source, destination] = [await newOrganization(store), await newOrganization(store)];
      const connection = await create(
        connectionRecord(source, destination, {
          createTime: new Date("2024-02-29T23:59:59.001Z"),
          updateTime: new Date("2024-03-01T00:00:00.999Z"),
        }),
      );
      const stored = await store.getConnection(connection.id);
      expect(stored?.createTime.toISOString()).toBe("2024-02-29T23:59:59.001Z");
      expect(stored?.updateTime.toISOString()).toBe("2024-03-01T00:00:00.999Z");
      expect(stored?.activateTime).toBeUndefined();
      expect(stored?.deactivateTime).toBeUndefined();

      const activated = await advance(connection, "ACTIVE");
      const deactivated = await advance(activated, "INACTIVE");
      const reread = await store.getConnection(connection.id);
      expect(reread?.activateTime?.getTime()).toBe(activated.updateTime.getTime());
      expect(reread?.deactivateTime?.getTime()).toBe(deactivated.updateTime.getTime());
      const page = await store.listEvents({ connectionId: connection.id, after: undefined, limit: 10 });
      expect(page.items[0]?.createTime.getTime()).toBe(connection.updateTime.getTime());
      expect(page.items[0]?.fromState).toBeUndefined();
    });

    it("refuses a second connection for the same ordered pair, and records no event for it", async () => {
      const [source, destination] = [await newOrganization(store), await newOrganization(store)];
      const first = await create(connectionRecord(source, destination));
      const second = connectionRecord(source, destination);
      await expectAlreadyExists(store.createConnection(second, createdEvent(second)), "pair");
      expect(await store.getConnection(second.id)).toBeUndefined();
      expect((await store.listEvents({ connectionId: second.id, after: undefined, limit: 10 })).items).toEqual([]);
      expect(await store.findConnectionByPair(source, destination)).toEqual(first);
      // The reverse direction is a different Connection.
      await create(connectionRecord(destination, source));
    });

    it("keeps the create_request_id it was given, which is no longer a key: answers are", async () => {
      const source = await newOrganization(store);
      const requestId = uniqueId("req");
      const first = await create(
        connectionRecord(source, await newOrganization(store), { createRequestId: requestId }),
      );
      await create(connectionRecord(source, await newOrganization(store), { createRequestId: requestId }));
      expect((await store.getConnection(first.id))?.createRequestId).toBe(requestId);
    });

    it("lets exactly one of 50 concurrent creates for one pair succeed", async () => {
      const [source, destination] = [await newOrganization(store), await newOrganization(store)];
      const attempts = Array.from({ length: 50 }, () => connectionRecord(source, destination));
      const results = await Promise.allSettled(attempts.map((c) => store.createConnection(c, createdEvent(c))));
      const winners = attempts.filter((_, i) => results[i]?.status === "fulfilled");
      expect(winners).toHaveLength(1);
      for (const result of results) {
        if (result.status === "rejected") {
          expect(result.reason).toBeInstanceOf(AlreadyExistsError);
          expect((result.reason as AlreadyExistsError).conflict).toBe("pair");
        }
      }
      expect((await store.findConnectionByPair(source, destination))?.id).toBe(winners[0]?.id);
    });

    it("refuses a connection to an unregistered organization without calling it a duplicate", async () => {
      const connection = connectionRecord(await newOrganization(store), uniqueId("org"));
      const error = await rejectionOf(store.createConnection(connection, createdEvent(connection)));
      expect(error).not.toBeInstanceOf(AlreadyExistsError);
      expect(await store.getConnection(connection.id)).toBeUndefined();
    });
  });

  describe("idempotency records", () => {
    it("saves a write's answer in the write's transaction, and finds it by scope and request id", async () => {
      const [source, destination] = [await newOrganization(store), await newOrganization(store)];
      const connection = connectionRecord(source, destination);
      const answer = answerRecord({ scope: `organization:${source}` });
      await store.createConnection(connection, createdEvent(connection), undefined, answer);
      expect(await store.findIdempotencyRecord(answer.scope, answer.requestId)).toEqual(answer);
      expect(await store.findIdempotencyRecord(`organization:${destination}`, answer.requestId)).toBeUndefined();

      const { next, event } = transition(connection, "ACTIVE");
      const activated = answerRecord({ scope: `organization:${destination}`, method: "ActivateConnection" });
      expect(await store.saveTransition(next, event, undefined, activated)).toBe(true);
      expect(await store.findIdempotencyRecord(activated.scope, activated.requestId)).toEqual(activated);

      const organization = { id: uniqueId("org"), name: "Answered", createTime: new Date() };
      const registered = answerRecord({ scope: "caller:provisioning", method: "CreateOrganization" });
      await store.createOrganization(organization, undefined, registered);
      expect(await store.findIdempotencyRecord(registered.scope, registered.requestId)).toEqual(registered);
    });

    it("keeps a final error as it was given", async () => {
      const answer = answerRecord({
        outcome: {
          error: { reason: "INVALID_STATE_TRANSITION", message: "cannot do that", metadata: { state: "STATE_ACTIVE" } },
        },
      });
      await store.saveIdempotencyRecord(answer);
      expect(await store.findIdempotencyRecord(answer.scope, answer.requestId)).toEqual(answer);
    });

    it("refuses a taken key and writes nothing of the write it came with", async () => {
      const source = await newOrganization(store);
      const taken = answerRecord({ scope: `organization:${source}` });
      await store.saveIdempotencyRecord(taken);
      const again = { ...answerRecord(), scope: taken.scope, requestId: taken.requestId };
      await expectAlreadyExists(store.saveIdempotencyRecord(again), "request_id");

      const connection = connectionRecord(source, await newOrganization(store));
      await expectAlreadyExists(
        store.createConnection(connection, createdEvent(connection), undefined, again),
        "request_id",
      );
      expect(await store.getConnection(connection.id)).toBeUndefined();
      expect((await store.listEvents({ connectionId: connection.id, after: undefined, limit: 10 })).items).toEqual([]);

      const existing = await create(connectionRecord(source, await newOrganization(store)));
      const { next, event } = transition(existing, "INACTIVE");
      await expectAlreadyExists(store.saveTransition(next, event, undefined, again), "request_id");
      expect(await store.getConnection(existing.id)).toEqual(existing);
      expect((await store.listEvents({ connectionId: existing.id, after: undefined, limit: 10 })).items).toHaveLength(
        1,
      );

      const organization = { id: uniqueId("org"), name: "Not registered", createTime: new Date() };
      await expectAlreadyExists(store.createOrganization(organization, undefined, again), "request_id");
      expect(await store.getOrganization(organization.id)).toBeUndefined();
      expect(await store.findIdempotencyRecord(taken.scope, taken.requestId)).toEqual(taken);
    });

    it("lets exactly one of 20 concurrent writes with one key commit", async () => {
      const source = await newOrganization(store);
      const key = { scope: `organization:${source}`, requestId: uniqueId("rid") };
      const attempts = await Promise.all(
        Array.from({ length: 20 }, async () => connectionRecord(source, await newOrganization(store))),
      );
      const results = await Promise.allSettled(
        attempts.map((c) => store.createConnection(c, createdEvent(c), undefined, answerRecord(key))),
      );
      expect(results.filter((result) => result.status === "fulfilled")).toHaveLength(1);
      for (const result of results) {
        if (result.status === "rejected") expect((result.reason as AlreadyExistsError).conflict).toBe("request_id");
      }
      const created = await Promise.all(attempts.map((c) => store.getConnection(c.id)));
      expect(created.filter((c) => c !== undefined)).toHaveLength(1);
    });

    it("prunes the records made before a time, oldest first, at most a batch at a time", async () => {
      const base = Date.now() + 365 * 24 * 3_600_000;
      const at = (minutes: number) => new Date(base + minutes * 60_000);
      const old = Array.from({ length: 5 }, (_, i) => answerRecord({ createTime: at(i) }));
      const kept = answerRecord({ createTime: at(10) });
      for (const record of [...old, kept]) await store.saveIdempotencyRecord(record);
      // Everything this suite made before is older too: prune it first, then count exactly.
      while ((await store.pruneIdempotencyRecords(at(-1), 1000)) > 0);

      expect(await store.pruneIdempotencyRecords(at(5), 3)).toBe(3);
      const left = await Promise.all(old.map((r) => store.findIdempotencyRecord(r.scope, r.requestId)));
      expect(left.map((r) => r !== undefined)).toEqual([false, false, false, true, true]);
      expect(await store.pruneIdempotencyRecords(at(5), 3)).toBe(2);
      expect(await store.pruneIdempotencyRecords(at(5), 3)).toBe(0);
      expect(await store.findIdempotencyRecord(kept.scope, kept.requestId)).toEqual(kept);
    });
  });

  describe("transitions", () => {
    it("saves the next version and its event, and refuses a stale version without changing anything", async () => {
      const connection = await create(connectionRecord(await newOrganization(store), await newOrganization(store)));
      const active = await advance(connection, "ACTIVE");
      expect(await store.getConnection(connection.id)).toEqual(active);

      const stale = transition(connection, "INACTIVE");
      expect(await store.saveTransition(stale.next, stale.event)).toBe(false);
      expect(await store.getConnection(connection.id)).toEqual(active);
      const events = await store.listEvents({ connectionId: connection.id, after: undefined, limit: 10 });
      expect(events.items.map((e) => [e.type, e.fromState, e.toState])).toEqual([
        ["CREATED", undefined, "PENDING"],
        ["ACTIVATED", "PENDING", "ACTIVE"],
      ]);
    });

    it("saves no answer with a stale version: the answer comes only with the write", async () => {
      const connection = await create(connectionRecord(await newOrganization(store), await newOrganization(store)));
      await advance(connection, "ACTIVE");
      const stale = transition(connection, "INACTIVE");
      const answer = answerRecord({ scope: `organization:${connection.sourceOrganizationId}` });
      expect(await store.saveTransition(stale.next, stale.event, undefined, answer)).toBe(false);
      expect(await store.findIdempotencyRecord(answer.scope, answer.requestId)).toBeUndefined();
      // The key stays free for the retry that decides again.
      const current = (await store.getConnection(connection.id)) as ConnectionRecord;
      const retried = transition(current, "INACTIVE");
      expect(await store.saveTransition(retried.next, retried.event, undefined, answer)).toBe(true);
      expect(await store.findIdempotencyRecord(answer.scope, answer.requestId)).toEqual(answer);
    });

    it("refuses a transition of a connection that does not exist", async () => {
      const ghost = connectionRecord(await newOrganization(store), await newOrganization(store));
      const { next, event } = transition(ghost, "ACTIVE");
      expect(await store.saveTransition(next, event)).toBe(false);
      expect((await store.listEvents({ connectionId: ghost.id, after: undefined, limit: 10 })).items).toEqual([]);
    });

    it("lets exactly one of concurrent transitions from the same version win", async () => {
      const connection = await create(connectionRecord(await newOrganization(store), await newOrganization(store)));
      const attempts = Array.from({ length: 20 }, (_, i) =>
        transition(connection, i % 2 === 0 ? "ACTIVE" : "INACTIVE"),
      );
      const results = await Promise.all(attempts.map(({ next, event }) => store.saveTransition(next, event)));
      expect(results.filter(Boolean)).toHaveLength(1);
      const winner = attempts[results.indexOf(true)];
      expect(await store.getConnection(connection.id)).toEqual(winner?.next);
      const events = await store.listEvents({ connectionId: connection.id, after: undefined, limit: 50 });
      expect(events.items.map((e) => e.id)).toEqual([events.items[0]?.id, winner?.event.id]);
    });
  });

  describe("listConnections", () => {
    // The organization under test, with 13 Connections created in this order (oldest first).
    let organization: string;
    let created: ConnectionRecord[];

    beforeAll(async () => {
      organization = await newOrganization(store);
      created = [];
      for (let i = 0; i < 13; i++) {
        const other = await newOrganization(store);
        const inbound = i % 3 === 0;
        let connection = await create(
          inbound ? connectionRecord(other, organization) : connectionRecord(organization, other),
        );
        if (i % 4 === 1) connection = await advance(connection, "ACTIVE");
        if (i % 4 === 2) connection = await advance(connection, "INACTIVE");
        created.push(connection);
        // Someone else's Connection between them, which must never be listed.
        await create(connectionRecord(other, await newOrganization(store)));
      }
    }, 30_000);

    async function listAll(direction: Direction, states: State[], limit: number) {
      const ids: string[] = [];
      const pageSizes: number[] = [];
      let before: string | undefined;
      do {
        const page = await store.listConnections({ organizationId: organization, direction, states, before, limit });
        pageSizes.push(page.items.length);
        ids.push(...page.items.map((c) => c.id));
        before = page.nextCursor;
      } while (before !== undefined && pageSizes.length < 100);
      return { ids, pageSizes };
    }

    function expected(filter: (c: ConnectionRecord) => boolean): string[] {
      return created
        .filter(filter)
        .map((c) => c.id)
        .reverse();
    }

    const isOutbound = (c: ConnectionRecord) => c.sourceOrganizationId === organization;

    it.each([1, 2, 4, 5, 13, 50])("pages through both directions, newest first, %i per page", async (limit) => {
      const { ids, pageSizes } = await listAll("BOTH", [], limit);
      expect(ids).toEqual(expected(() => true));
      expect(pageSizes).toHaveLength(Math.max(1, Math.ceil(13 / limit)));
      expect(pageSizes.slice(0, -1).every((size) => size === limit)).toBe(true);
    });

    it.each([1, 3, 4])("pages through outbound and inbound apart, %i per page", async (limit) => {
      expect((await listAll("OUTBOUND", [], limit)).ids).toEqual(expected(isOutbound));
      expect((await listAll("INBOUND", [], limit)).ids).toEqual(expected((c) => !isOutbound(c)));
    });

    it("answers a page that ends exactly at the last item without a cursor", async () => {
      const outbound = expected(isOutbound);
      const { pageSizes } = await listAll("OUTBOUND", [], outbound.length);
      expect(pageSizes).toEqual([outbound.length]);
    });

    it.each<[Direction, State[]]>([
      ["BOTH", ["ACTIVE"]],
      ["BOTH", ["PENDING", "INACTIVE"]],
      ["OUTBOUND", ["INACTIVE"]],
      ["INBOUND", ["PENDING"]],
      ["BOTH", ["PENDING", "ACTIVE", "INACTIVE"]],
    ])("filters %s by states %j", async (direction, states) => {
      const side = (c: ConnectionRecord) => direction === "BOTH" || (direction === "OUTBOUND") === isOutbound(c);
      const want = expected((c) => side(c) && states.includes(c.state));
      expect(want.length).toBeGreaterThan(0);
      expect((await listAll(direction, states, 2)).ids).toEqual(want);
    });

    it("orders by create_time, not by insertion, and breaks ties the same way on every page", async () => {
      // Concurrent creates (or replicas) insert in another order than their clocks read.
      const owner = await newOrganization(store);
      const at = (ms: number) => new Date(Date.UTC(2026, 0, 1) + ms);
      const times = [5, 1, 9, 3, 3, 3, 7, 0, 3];
      const inserted: ConnectionRecord[] = [];
      for (const ms of times) {
        const other = await newOrganization(store);
        const record = ms % 2 === 0 ? connectionRecord(other, owner) : connectionRecord(owner, other);
        inserted.push(await create({ ...record, createTime: at(ms), updateTime: at(ms) }));
      }
      // Newest first; among equal times the later insert first.
      const want = inserted
        .map((connection, index) => ({ connection, index }))
        .sort((a, b) => b.connection.createTime.getTime() - a.connection.createTime.getTime() || b.index - a.index)
        .map(({ connection }) => connection.id);
      for (const limit of [1, 2, 4, 20]) {
        const ids: string[] = [];
        let before: string | undefined;
        do {
          const page = await store.listConnections({
            organizationId: owner,
            direction: "BOTH",
            states: [],
            before,
            limit,
          });
          ids.push(...page.items.map((c) => c.id));
          before = page.nextCursor;
        } while (before !== undefined && ids.length <= times.length);
        expect(ids, `${limit} per page`).toEqual(want);
      }
    });

    it("lists nothing for an organization without connections", async () => {
      const page = await store.listConnections({
        organizationId: await newOrganization(store),
        direction: "BOTH",
        states: [],
        before: undefined,
        limit: 10,
      });
      expect(page).toEqual({ items: [], nextCursor: undefined });
    });
  });

  describe("updates", () => {
    it("saves new name and scopes with the version lock, and records the scopes before and after", async () => {
      const connection = await create(connectionRecord(await newOrganization(store), await newOrganization(store)));
      const active = await advance(connection, "ACTIVE");
      const at = new Date(active.updateTime.getTime() + 1);
      const updated: ConnectionRecord = {
        ...active,
        name: "Renamed",
        scopes: ["account.read", "inquiry.read", "transaction.read"],
        state: "PENDING",
        updateTime: at,
        version: active.version + 1,
      };
      const event = { ...eventFor(updated, "UPDATED", "ACTIVE"), previousScopes: active.scopes };
      expect(await store.saveTransition(updated, event)).toBe(true);
      expect(await store.getConnection(connection.id)).toEqual(updated);
      expect(await store.getConnectionForCheck(connection.id)).toEqual(updated);
      // A second update from the same version loses.
      expect(await store.saveTransition({ ...updated, name: "Lost" }, eventFor(updated, "UPDATED", "ACTIVE"))).toBe(
        false,
      );
      const events = await store.listEvents({ connectionId: connection.id, after: undefined, limit: 10 });
      expect(events.items.at(-1)).toEqual(event);
      expect(events.items[0]).toMatchObject({
        sourceOrganizationId: connection.sourceOrganizationId,
        destinationOrganizationId: connection.destinationOrganizationId,
        scopes: connection.scopes,
        previousScopes: [],
      });
    });
  });

  describe("listEvents", () => {
    it("pages through events oldest first", async () => {
      let connection = await create(connectionRecord(await newOrganization(store), await newOrganization(store)));
      const other = await create(connectionRecord(await newOrganization(store), await newOrganization(store)));
      await advance(other, "ACTIVE");
      for (const to of ["ACTIVE", "INACTIVE", "PENDING", "ACTIVE", "INACTIVE"] as const) {
        connection = await advance(connection, to);
      }
      const types = ["CREATED", "ACTIVATED", "DEACTIVATED", "REACTIVATED", "ACTIVATED", "DEACTIVATED"];
      for (const limit of [1, 3, 4, 6, 10]) {
        const seen: string[] = [];
        const pageSizes: number[] = [];
        let after: string | undefined;
        do {
          const page = await store.listEvents({ connectionId: connection.id, after, limit });
          expect(page.items.every((e) => e.connectionId === connection.id)).toBe(true);
          seen.push(...page.items.map((e) => e.type));
          pageSizes.push(page.items.length);
          after = page.nextCursor;
        } while (after !== undefined && pageSizes.length < 20);
        expect(seen).toEqual(types);
        expect(pageSizes).toHaveLength(Math.ceil(types.length / limit));
      }
    });
  });

  describe("getConnectionForCheck", () => {
    it("sees a created connection and every transition as soon as it returns", async () => {
      let connection = await create(connectionRecord(await newOrganization(store), await newOrganization(store)));
      expect(await store.getConnectionForCheck(connection.id)).toEqual(connection);
      for (const to of ["ACTIVE", "INACTIVE", "PENDING", "ACTIVE"] as const) {
        connection = await advance(connection, to);
        expect(await store.getConnectionForCheck(connection.id)).toEqual(connection);
      }
      expect(await store.getConnectionForCheck(uniqueId("cxn"))).toBeUndefined();
    });

    it("never answers older than the last returned transition while checks race with writes", async () => {
      let connection = await create(connectionRecord(await newOrganization(store), await newOrganization(store)));
      const inFlight: Promise<void>[] = [];
      for (let round = 0; round < 30; round++) {
        const floor = connection.version;
        for (let i = 0; i < 5; i++) {
          inFlight.push(
            store.getConnectionForCheck(connection.id).then((seen) => {
              expect(seen?.version).toBeGreaterThanOrEqual(floor);
            }),
          );
        }
        connection = await advance(connection, connection.state === "ACTIVE" ? "INACTIVE" : "ACTIVE");
        expect((await store.getConnectionForCheck(connection.id))?.version).toBe(connection.version);
      }
      await Promise.all(inFlight);
      expect(await store.getConnectionForCheck(connection.id)).toEqual(connection);
    });

    it("reads many at once, in the order asked, with repeats and unknown ids", async () => {
      const source = await newOrganization(store);
      const connections: ConnectionRecord[] = [];
      for (let i = 0; i < 5; i++)
        connections.push(await create(connectionRecord(source, await newOrganization(store))));
      const missing = uniqueId("cxn");
      const ids = [connections[3], connections[0], undefined, connections[3], connections[4]].map(
        (c) => c?.id ?? missing,
      );
      expect(await store.getConnectionsForCheck(ids)).toEqual([
        connections[3],
        connections[0],
        undefined,
        connections[3],
        connections[4],
      ]);
      expect(await store.getConnectionsForCheck([])).toEqual([]);
    });

    it("answers many concurrent checks of different connections correctly", async () => {
      const connections: ConnectionRecord[] = [];
      const source = await newOrganization(store);
      for (let i = 0; i < 20; i++)
        connections.push(await create(connectionRecord(source, await newOrganization(store))));
      const ids = [...connections.map((c) => c.id), uniqueId("cxn")];
      const answers = await Promise.all(
        Array.from({ length: 200 }, (_, i) => store.getConnectionForCheck(ids[i % ids.length] ?? "")),
      );
      answers.forEach((answer, i) => {
        expect(answer).toEqual(connections[i % ids.length]);
      });
    });
  });
});

describeEachDatabase("Store writes that fail, on a store of one connection", (database) => {
  let testStore: TestStore;
  beforeAll(async () => {
    testStore = await createTestStore(database, { poolSize: 1 });
  });
  afterAll(async () => {
    await testStore.dispose();
  });

  // On PostgreSQL each of these is one statement sent with its BEGIN and COMMIT: a failing one must
  // leave the one connection out of any transaction, or every later write would fail or join it.
  it("leave the connection usable, and nothing of them committed", async () => {
    const { store } = testStore;
    const source = await newOrganization(store);
    const connection = connectionRecord(source, await newOrganization(store));
    await store.createConnection(connection, createdEvent(connection));

    const twin = connectionRecord(source, connection.destinationOrganizationId);
    await expectAlreadyExists(store.createConnection(twin, createdEvent(twin)), "pair");
    const taken = answerRecord({ scope: `organization:${source}` });
    await store.saveIdempotencyRecord(taken);
    const { next, event } = transition(connection, "ACTIVE");
    await expectAlreadyExists(store.saveTransition(next, event, undefined, taken), "request_id");
    expect(await store.getConnection(connection.id)).toEqual(connection);

    expect(await store.saveTransition(next, event)).toBe(true);
    expect(await store.getConnection(connection.id)).toEqual(next);
    const events = await store.listEvents({ connectionId: connection.id, after: undefined, limit: 10 });
    expect(events.items.map((e) => e.type)).toEqual(["CREATED", "ACTIVATED"]);
    expect(await store.getConnection(twin.id)).toBeUndefined();
  });
});
