// Several real service processes on one PostgreSQL database, driven through different replicas at
// once: the one-per-pair rule, the state machine's history, read-after-write (of transitions and of
// updates, for single and batched checks) and the order of ListConnections must hold across
// processes, not just inside one.

import { afterAll, beforeAll, expect, it } from "vitest";
import { Connection_State, type ConnectionEvent } from "../../gen/connections/v1/connection_pb.js";
import {
  CheckConnectionRequest_Action,
  CheckConnectionResponse_Reason,
} from "../../gen/connections/v1/connection_service_pb.js";
import { describePostgres, type ProvisionedDatabase, provisionPostgres } from "../support/databases.js";
import { DATABASE_POOL_SIZE, mapConcurrently } from "../support/fixtures.js";
import { type ServiceProcess, startServiceProcess } from "../support/process.js";
import { Code, GrpcJsRpcClient, RpcError, uniqueId } from "../support/service.js";

const REPLICAS = 3;

describePostgres(`${REPLICAS} replicas on one PostgreSQL`, () => {
  let database: ProvisionedDatabase;
  let replicas: ServiceProcess[] = [];
  let clients: GrpcJsRpcClient[] = [];
  const client = (index: number) => clients[index % clients.length] as GrpcJsRpcClient;

  beforeAll(async () => {
    database = await provisionPostgres();
    // Started at once: their migrations race, and the advisory lock must make that safe.
    replicas = await Promise.all(
      Array.from({ length: REPLICAS }, () => startServiceProcess({ DATABASE_URL: database.url })),
    );
    clients = replicas.map((replica) => new GrpcJsRpcClient(`127.0.0.1:${replica.port}`));
  }, 120_000);

  afterAll(async () => {
    for (const rpc of clients) await rpc.close();
    await Promise.all(replicas.map((replica) => replica.stop()));
    await database?.drop();
  });

  async function twoOrganizations(): Promise<[string, string]> {
    const source = uniqueId("org_src");
    const destination = uniqueId("org_dst");
    for (const [index, id] of [source, destination].entries()) {
      await client(index).as({ caller: "provisioning" }).createOrganization({ id, name: id });
    }
    return [source, destination];
  }

  async function allEvents(connectionId: string, organizationId: string): Promise<ConnectionEvent[]> {
    const events: ConnectionEvent[] = [];
    let pageToken = "";
    do {
      const page = await client(0)
        .as({ caller: "api-gateway", organizationId })
        .listConnectionEvents({ connectionId, pageSize: 100, pageToken });
      events.push(...page.events);
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
    return events;
  }

  it("writes once when 50 calls with one request_id race across replicas, for every write RPC", async () => {
    const [source, destination] = await twoOrganizations();
    /** 50 calls spread over the replicas; every answer is the same, or ABORTED REQUEST_IN_PROGRESS. */
    async function race<T>(call: (index: number) => Promise<T>): Promise<T> {
      const outcomes = await Promise.allSettled(Array.from({ length: 50 }, (_, index) => call(index)));
      const answers = outcomes.flatMap((outcome) => (outcome.status === "fulfilled" ? [outcome.value] : []));
      for (const outcome of outcomes) {
        if (outcome.status === "rejected") {
          expect(outcome.reason).toMatchObject({ code: Code.Aborted, reason: "REQUEST_IN_PROGRESS" });
        }
      }
      expect(answers.length).toBeGreaterThan(0);
      for (const answer of answers) expect(answer).toEqual(answers[0]);
      return answers[0] as T;
    }
    const as = (index: number, organizationId: string) => client(index).as({ caller: "dashboard-bff", organizationId });
    const created = await race((index) =>
      as(index, source).createConnection({
        destinationOrganizationId: destination,
        scopes: ["account.read", "inquiry.read"],
        requestId: "replicas-create",
      }),
    );
    const id = created.connection?.id ?? "";
    await race((index) => as(index, destination).activateConnection({ id, requestId: "replicas-activate" }));
    await race((index) =>
      as(index, source).updateConnection({
        connection: { id, scopes: ["account.read"] },
        updateMask: { paths: ["scopes"] },
        requestId: "replicas-update",
      }),
    );
    await race((index) => as(index, destination).deactivateConnection({ id, requestId: "replicas-deactivate" }));
    await race((index) => as(index, source).reactivateConnection({ id, requestId: "replicas-reactivate" }));
    const registration = { name: "Raced across replicas", requestId: uniqueId("rid") };
    await race((index) => client(index).as({ caller: "provisioning" }).createOrganization(registration));

    const events = await allEvents(id, source);
    expect(events.map((event) => event.type)).toHaveLength(5);
    // A replay long after, on every replica, answers what the first call answered.
    for (let index = 0; index < REPLICAS; index++) {
      const replayed = await as(index, source).createConnection({
        destinationOrganizationId: destination,
        scopes: ["inquiry.read", "account.read"],
        requestId: "replicas-create",
      });
      expect(replayed).toEqual(created);
    }
  });

  it("lets exactly one of many concurrent creates for one pair win, across replicas", async () => {
    const [source, destination] = await twoOrganizations();
    const outcomes = await Promise.allSettled(
      Array.from({ length: 60 }, (_, index) =>
        client(index)
          .as({ caller: "api-gateway", organizationId: source })
          .createConnection({ destinationOrganizationId: destination, scopes: ["account.read"], name: `try ${index}` }),
      ),
    );
    const won = outcomes.flatMap((outcome) => (outcome.status === "fulfilled" ? [outcome.value.connection?.id] : []));
    expect(won).toHaveLength(1);
    for (const outcome of outcomes) {
      if (outcome.status === "fulfilled") continue;
      expect(outcome.reason).toBeInstanceOf(RpcError);
      expect(outcome.reason).toMatchObject({
        code: Code.AlreadyExists,
        reason: "CONNECTION_ALREADY_EXISTS",
        metadata: { connection_id: won[0] },
      });
    }
  });

  it("keeps an unbroken history when both parties race transitions through different replicas", async () => {
    const [source, destination] = await twoOrganizations();
    const created = await client(0)
      .as({ caller: "api-gateway", organizationId: source })
      .createConnection({ destinationOrganizationId: destination, scopes: ["account.read"] });
    const id = created.connection?.id ?? "";

    const attempts = [
      { rpc: "activateConnection", caller: "dashboard-bff", organizationId: destination },
      { rpc: "deactivateConnection", caller: "api-gateway", organizationId: source },
      { rpc: "deactivateConnection", caller: "dashboard-bff", organizationId: destination },
      { rpc: "reactivateConnection", caller: "api-gateway", organizationId: source },
    ] as const;
    const succeeded: string[] = [];
    for (let round = 0; round < 15; round++) {
      const { connection } = await client(round)
        .as({ caller: "api-gateway", organizationId: source })
        .getConnection({ id });
      const calls = Array.from({ length: 12 }, (_, index) => {
        const attempt = attempts[(index + round) % attempts.length] as (typeof attempts)[number];
        const requestId = uniqueId("req");
        // Half send the etag they read, so stale etags are raced too.
        const etag = index % 2 === 0 ? (connection?.etag ?? "") : "";
        return client(index)
          .as({ caller: attempt.caller, organizationId: attempt.organizationId, requestId })
          [attempt.rpc]({ id, etag })
          .then(
            () => succeeded.push(requestId),
            (error: unknown) => {
              expect(error).toBeInstanceOf(RpcError);
              expect([Code.FailedPrecondition, Code.Aborted]).toContain((error as RpcError).code);
            },
          );
      });
      await Promise.all(calls);
    }

    const events = await allEvents(id, source);
    const final = await client(2).as({ caller: "api-gateway", organizationId: destination }).getConnection({ id });
    expect(events[0]?.type).toBe(1);
    for (let index = 1; index < events.length; index++) {
      expect(events[index]?.fromState, `event ${index}`).toBe(events[index - 1]?.toState);
    }
    expect(final.connection?.state).toBe(events.at(-1)?.toState);
    // Every successful call is recorded exactly once, and nothing else is.
    const recorded = events.slice(1).map((event) => event.requestId);
    expect(new Set(recorded).size).toBe(recorded.length);
    expect(recorded.sort()).toEqual([...succeeded].sort());
    expect(succeeded.length).toBeGreaterThan(0);
  });

  it("never allows a check on any replica once a deactivation has returned on another", async () => {
    const [source, destination] = await twoOrganizations();
    const created = await client(0)
      .as({ caller: "api-gateway", organizationId: source })
      .createConnection({ destinationOrganizationId: destination, scopes: ["transaction.read"] });
    const id = created.connection?.id ?? "";
    const check = (replica: number) =>
      client(replica).as({ caller: "token-service" }).checkConnection({
        connectionId: id,
        organizationId: source,
        action: CheckConnectionRequest_Action.ISSUE_SHARE_TOKEN,
        scope: "transaction.read",
      });

    for (let round = 0; round < 20; round++) {
      await client(round).as({ caller: "dashboard-bff", organizationId: destination }).activateConnection({ id });
      await expect(check(round + 2)).resolves.toMatchObject({ allowed: true });
      const deactivated = await client(round + 1)
        .as({ caller: "api-gateway", organizationId: destination })
        .deactivateConnection({ id });
      expect(deactivated.connection?.state).toBe(Connection_State.INACTIVE);
      const answers = await Promise.all(Array.from({ length: 3 * REPLICAS }, (_, index) => check(index)));
      for (const answer of answers) {
        expect(answer).toMatchObject({ allowed: false, reason: CheckConnectionResponse_Reason.NOT_ACTIVE });
      }
      await client(round + 2)
        .as({ caller: "api-gateway", organizationId: source })
        .reactivateConnection({ id });
    }
  });

  it("never allows a removed scope on any replica once an update has returned on another", async () => {
    const [source, destination] = await twoOrganizations();
    const created = await client(0)
      .as({ caller: "api-gateway", organizationId: source })
      .createConnection({ destinationOrganizationId: destination, scopes: ["account.read", "transaction.read"] });
    const id = created.connection?.id ?? "";
    await client(1).as({ caller: "dashboard-bff", organizationId: destination }).activateConnection({ id });
    const checkOf = (scope: string) => ({
      connectionId: id,
      organizationId: destination,
      action: CheckConnectionRequest_Action.REDEEM_SHARE_TOKEN,
      scope,
    });
    const single = (replica: number) =>
      client(replica).as({ caller: "token-service" }).checkConnection(checkOf("transaction.read"));
    const batch = (replica: number) =>
      client(replica)
        .as({ caller: "token-service" })
        .batchCheckConnection({
          checks: Array.from({ length: 20 }, (_, index) =>
            checkOf(index % 2 === 0 ? "transaction.read" : "account.read"),
          ),
        });
    const update = (replica: number, scopes: string[]) =>
      client(replica)
        .as({ caller: "api-gateway", organizationId: source })
        .updateConnection({ connection: { id, scopes }, updateMask: { paths: ["scopes"] } });

    for (let round = 0; round < 15; round++) {
      // Checks race with the update on every replica: they may see either side of it...
      const racing = Promise.all(Array.from({ length: REPLICAS }, (_, index) => [single(index), batch(index)]).flat());
      const narrowed = await update(round, ["account.read"]);
      expect(narrowed.connection?.state).toBe(Connection_State.ACTIVE);
      await racing;
      // ...but none that starts after it returned may allow the removed scope.
      const singles = await Promise.all(Array.from({ length: 2 * REPLICAS }, (_, index) => single(round + index)));
      for (const answer of singles) {
        expect(answer).toMatchObject({ allowed: false, reason: CheckConnectionResponse_Reason.SCOPE_NOT_GRANTED });
      }
      const batches = await Promise.all(Array.from({ length: REPLICAS }, (_, index) => batch(round + index)));
      for (const { results } of batches) {
        expect(results.map((result) => result.allowed)).toEqual(
          Array.from({ length: 20 }, (_, index) => index % 2 === 1),
        );
      }
      // Widening asks for consent again: nothing is allowed until the destination gives it.
      const widened = await update(round + 1, ["account.read", "transaction.read"]);
      expect(widened.connection?.state).toBe(Connection_State.PENDING);
      for (const { results } of await Promise.all(Array.from({ length: REPLICAS }, (_, index) => batch(index)))) {
        expect(results.every((result) => result.reason === CheckConnectionResponse_Reason.NOT_ACTIVE)).toBe(true);
      }
      await client(round + 2)
        .as({ caller: "dashboard-bff", organizationId: destination })
        .activateConnection({ id });
      await expect(single(round)).resolves.toMatchObject({ allowed: true });
    }
  });

  it("lists connections created concurrently through every replica newest first by create_time", async () => {
    const owner = uniqueId("org_owner");
    await client(0).as({ caller: "provisioning" }).createOrganization({ id: owner, name: owner });
    const others = Array.from({ length: 120 }, () => uniqueId("org_peer"));
    for (const [index, id] of others.entries()) {
      await client(index).as({ caller: "provisioning" }).createOrganization({ id, name: id });
    }
    // Within one replica's database pool, so that no create waits for a connection.
    const made = await mapConcurrently(others, DATABASE_POOL_SIZE, async (other, index) => {
      const [source, destination] = index % 2 === 0 ? [owner, other] : [other, owner];
      const { connection } = await client(index)
        .as({ caller: "api-gateway", organizationId: source })
        .createConnection({ destinationOrganizationId: destination, scopes: ["account.read"] });
      return connection?.id ?? "";
    });
    const listed: { id: string; ms: number }[] = [];
    let pageToken = "";
    do {
      const page = await client(listed.length)
        .as({ caller: "api-gateway", organizationId: owner })
        .listConnections({ pageSize: 9, pageToken });
      for (const connection of page.connections) {
        const seconds = Number(connection.createTime?.seconds ?? 0n);
        listed.push({ id: connection.id, ms: seconds * 1000 + (connection.createTime?.nanos ?? 0) / 1e6 });
      }
      pageToken = page.nextPageToken;
    } while (pageToken !== "" && listed.length <= made.length);
    expect(listed.map((entry) => entry.id).sort()).toEqual([...made].sort());
    for (let index = 1; index < listed.length; index++) {
      expect(listed[index]?.ms, `position ${index}`).toBeLessThanOrEqual(listed[index - 1]?.ms ?? 0);
    }
  });
});
