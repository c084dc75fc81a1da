// Idempotent writes through request_id (every write RPC), and the one-Connection-per-pair rule
// under concurrency: many creates for one pair at once make exactly one Connection.

import { expect, it } from "vitest";
import { Connection_State, ConnectionEvent_Type } from "../../gen/connections/v1/connection_pb.js";
import { connectionFixture, present } from "../support/fixtures.js";
import { Code, describeE2E, expectRpcError, RpcError, registerOrganizations, uniqueId } from "../support/service.js";

describeE2E("idempotent create", (e2e) => {
  it("returns the first call's answer for a retry, as it was then, also after the connection changed", async () => {
    const client = e2e.client();
    const [source = "", destination = ""] = await registerOrganizations(client, 2, "org_idem");
    const requestId = uniqueId("rid");
    const request = {
      destinationOrganizationId: destination,
      scopes: ["transaction.read", "account.read"],
      name: "Idempotent",
      requestId,
    };
    const bff = e2e.as("dashboard-bff", source, "user:first");
    const first = present((await bff.createConnection(request)).connection);
    expect(first.state).toBe(Connection_State.PENDING);

    // A plain retry, and one whose scopes differ only in order and duplicates.
    expect((await bff.createConnection(request)).connection?.id).toBe(first.id);
    const reordered = await bff.createConnection({
      ...request,
      scopes: ["account.read", "transaction.read", "account.read"],
    });
    expect(reordered.connection).toEqual(first);
    // The key belongs to the organization, whichever caller and actor retries.
    const viaGateway = await e2e.as("api-gateway", source, "api-key:other").createConnection(request);
    expect(viaGateway.connection?.id).toBe(first.id);
    expect(viaGateway.connection?.creator).toBe("user:first");

    // After its scopes were narrowed, it was activated and deactivated, the retry still answers
    // what the first call answered: the Connection as it was created.
    await bff.updateConnection({
      connection: { id: first.id, scopes: ["account.read"] },
      updateMask: { paths: ["scopes"] },
    });
    await e2e.as("dashboard-bff", destination).activateConnection({ id: first.id });
    await e2e.as("dashboard-bff", destination).deactivateConnection({ id: first.id });
    expect((await bff.createConnection(request)).connection).toEqual(first);

    // Only one Connection and one CREATED event exist.
    expect((await bff.listConnections({})).connections.map((connection) => connection.id)).toEqual([first.id]);
    const events = (await bff.listConnectionEvents({ connectionId: first.id })).events;
    expect(events.filter((event) => event.type === ConnectionEvent_Type.CREATED)).toHaveLength(1);
    expect(events).toHaveLength(4);
  });

  it("refuses the same request_id with other parameters, before the one-per-pair rule", async () => {
    const client = e2e.client();
    const [source = "", destination = "", other = ""] = await registerOrganizations(client, 3, "org_idem");
    const requestId = uniqueId("rid");
    const bff = e2e.as("dashboard-bff", source);
    const first = present(
      (
        await bff.createConnection({
          destinationOrganizationId: destination,
          scopes: ["account.read"],
          name: "First",
          requestId,
        })
      ).connection,
    );
    // Same pair (which already has a Connection), other name or scopes: REQUEST_ID_REUSED, not ALREADY_EXISTS.
    for (const changed of [
      { name: "Second" },
      { scopes: ["account.read", "inquiry.read"] },
      { scopes: ["inquiry.read"] },
      { name: "" },
    ]) {
      await expectRpcError(
        bff.createConnection({
          destinationOrganizationId: destination,
          scopes: ["account.read"],
          name: "First",
          requestId,
          ...changed,
        }),
        Code.InvalidArgument,
        "REQUEST_ID_REUSED",
        { field: "request_id" },
      );
    }
    // Another destination with the same key.
    await expectRpcError(
      bff.createConnection({ destinationOrganizationId: other, scopes: ["account.read"], name: "First", requestId }),
      Code.InvalidArgument,
      "REQUEST_ID_REUSED",
    );
    // A new key for the same pair: the pair rule.
    await expectRpcError(
      bff.createConnection({
        destinationOrganizationId: destination,
        scopes: ["account.read"],
        name: "First",
        requestId: uniqueId("rid"),
      }),
      Code.AlreadyExists,
      "CONNECTION_ALREADY_EXISTS",
      { connection_id: first.id },
    );
    // No key at all: the pair rule too.
    await expectRpcError(
      bff.createConnection({ destinationOrganizationId: destination, scopes: ["account.read"], name: "First" }),
      Code.AlreadyExists,
      "CONNECTION_ALREADY_EXISTS",
      { connection_id: first.id },
    );
    expect((await bff.listConnections({})).connections).toEqual([first]);
  });

  it("lets another organization use the same request_id independently", async () => {
    const client = e2e.client();
    const [a = "", b = "", c = ""] = await registerOrganizations(client, 3, "org_idem");
    const requestId = uniqueId("rid");
    const fromA = present(
      (
        await e2e
          .as("dashboard-bff", a)
          .createConnection({ destinationOrganizationId: c, scopes: ["account.read"], name: "Same", requestId })
      ).connection,
    );
    const fromB = present(
      (
        await e2e
          .as("dashboard-bff", b)
          .createConnection({ destinationOrganizationId: c, scopes: ["account.read"], name: "Same", requestId })
      ).connection,
    );
    expect(fromB.id).not.toBe(fromA.id);
    expect(fromB.sourceOrganizationId).toBe(b);
    // And with other parameters, since the key is per organization.
    const fromC = present(
      (
        await e2e
          .as("dashboard-bff", c)
          .createConnection({ destinationOrganizationId: a, scopes: ["inquiry.read"], name: "Other", requestId })
      ).connection,
    );
    expect(new Set([fromA.id, fromB.id, fromC.id]).size).toBe(3);
    // Each key still replays its own organization's Connection.
    const again = await e2e
      .as("api-gateway", b)
      .createConnection({ destinationOrganizationId: c, scopes: ["account.read"], name: "Same", requestId });
    expect(again.connection?.id).toBe(fromB.id);
  });

  it("answers concurrent retries of one request_id with one connection", async () => {
    const [source = "", destination = ""] = await registerOrganizations(e2e.client(), 2, "org_idem");
    const requestId = uniqueId("rid");
    const bff = e2e.as("dashboard-bff", source);
    const results = await Promise.allSettled(
      Array.from({ length: 20 }, () =>
        bff.createConnection({ destinationOrganizationId: destination, scopes: ["account.read"], requestId }),
      ),
    );
    const failures = results.flatMap((result) => (result.status === "rejected" ? [String(result.reason)] : []));
    expect(failures).toEqual([]);
    const created = results.flatMap((result) => (result.status === "fulfilled" ? [result.value.connection?.id] : []));
    expect(new Set(created).size).toBe(1);
    expect((await bff.listConnections({})).connections).toHaveLength(1);
  });

  for (const keys of ["distinct request ids", "no request ids"] as const) {
    it(`makes exactly one of 50 concurrent creates for one pair win (${keys})`, async () => {
      const [source = "", destination = ""] = await registerOrganizations(e2e.client(), 2, "org_race");
      const bff = e2e.as("api-gateway", source);
      const results = await Promise.allSettled(
        Array.from({ length: 50 }, (_, index) =>
          bff.createConnection({
            destinationOrganizationId: destination,
            scopes: ["account.read"],
            name: `attempt ${index}`,
            requestId: keys === "distinct request ids" ? uniqueId(`rid${index}`) : "",
          }),
        ),
      );
      const winners = results.flatMap((result) =>
        result.status === "fulfilled" ? [present(result.value.connection)] : [],
      );
      const losers = results.flatMap((result) => (result.status === "rejected" ? [result.reason as unknown] : []));
      expect(winners).toHaveLength(1);
      const winner = present(winners[0]);
      expect(losers).toHaveLength(49);
      for (const loser of losers) {
        expect(loser).toBeInstanceOf(RpcError);
        const error = loser as RpcError;
        expect({ code: Code[error.code], reason: error.reason, connectionId: error.metadata.connection_id }).toEqual({
          code: Code[Code.AlreadyExists],
          reason: "CONNECTION_ALREADY_EXISTS",
          connectionId: winner.id,
        });
      }
      const listed = await e2e.as("dashboard-bff", destination).listConnections({});
      expect(listed.connections).toEqual([winner]);
      const events = await bff.listConnectionEvents({ connectionId: winner.id });
      expect(events.events).toHaveLength(1);
    });
  }

  it("answers concurrent creates for a pair that already has a connection with its id", async () => {
    const fixture = await connectionFixture(e2e.client());
    const bff = e2e.as("dashboard-bff", fixture.source);
    const results = await Promise.allSettled(
      Array.from({ length: 10 }, () =>
        bff.createConnection({ destinationOrganizationId: fixture.destination, scopes: ["account.read"] }),
      ),
    );
    for (const result of results) {
      expect(result.status).toBe("rejected");
      if (result.status === "rejected") {
        expect(result.reason).toMatchObject({
          code: Code.AlreadyExists,
          reason: "CONNECTION_ALREADY_EXISTS",
          metadata: { connection_id: fixture.connection.id },
        });
      }
    }
  });

  it("replays a final error, even once the same call would now succeed", async () => {
    const [source = ""] = await registerOrganizations(e2e.client(), 1, "org_idem");
    const bff = e2e.as("dashboard-bff", source);
    const requestId = uniqueId("rid");
    const missing = uniqueId("org_later");
    const request = { destinationOrganizationId: missing, scopes: ["account.read"], requestId };
    const first = await expectRpcError(bff.createConnection(request), Code.NotFound, "ORGANIZATION_NOT_FOUND");
    await e2e.as("provisioning").createOrganization({ id: missing, name: "Registered later" });
    const replayed = await expectRpcError(bff.createConnection(request), Code.NotFound, "ORGANIZATION_NOT_FOUND");
    expect(replayed.metadata).toEqual(first.metadata);
    expect(replayed.rawMessage).toBe(first.rawMessage);
    expect((await bff.listConnections({})).connections).toEqual([]);
    // The key is spent on that request; a new key makes the Connection.
    const created = await bff.createConnection({ ...request, requestId: uniqueId("rid") });
    expect(created.connection?.destinationOrganizationId).toBe(missing);
  });

  it("registers an organization once when 20 registrations of one id race", async () => {
    const id = uniqueId("org_race");
    const provisioning = e2e.as("provisioning");
    const results = await Promise.allSettled(
      Array.from({ length: 20 }, (_, index) => provisioning.createOrganization({ id, name: `Racer ${index}` })),
    );
    const winners = results.filter((result) => result.status === "fulfilled");
    expect(winners).toHaveLength(1);
    for (const result of results) {
      if (result.status === "rejected") {
        expect(result.reason).toMatchObject({ code: Code.AlreadyExists, reason: "ORGANIZATION_ALREADY_EXISTS" });
      }
    }
    const { organization } = await provisioning.getOrganization({ id });
    const winner = winners[0];
    expect(winner?.status === "fulfilled" ? winner.value.organization : undefined).toEqual(organization);
  });

  it("lets exactly one of 10 concurrent transitions win: the others see the new state or a stale etag", async () => {
    for (const withEtag of [false, true]) {
      const fixture = await connectionFixture(e2e.client(), { state: "ACTIVE" });
      const results = await Promise.allSettled(
        Array.from({ length: 10 }, (_, index) =>
          e2e.as("api-gateway", index % 2 === 0 ? fixture.source : fixture.destination).deactivateConnection({
            id: fixture.connection.id,
            etag: withEtag ? fixture.connection.etag : "",
            reason: `${index}`,
          }),
        ),
      );
      const winners = results.filter((result) => result.status === "fulfilled");
      expect(winners, `with etag: ${withEtag}`).toHaveLength(1);
      for (const result of results) {
        if (result.status === "rejected") {
          expect(result.reason, `with etag: ${withEtag}`).toMatchObject(
            withEtag
              ? { code: Code.Aborted, reason: "ETAG_MISMATCH" }
              : {
                  code: Code.FailedPrecondition,
                  reason: "INVALID_STATE_TRANSITION",
                  metadata: { state: "STATE_INACTIVE" },
                },
          );
        }
      }
      const events = await e2e
        .as("dashboard-bff", fixture.source)
        .listConnectionEvents({ connectionId: fixture.connection.id });
      expect(events.events.map((event) => ConnectionEvent_Type[event.type])).toEqual([
        "CREATED",
        "ACTIVATED",
        "DEACTIVATED",
      ]);
    }
  });
});
