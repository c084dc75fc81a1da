// The whole life of a Connection through the real service, including re-consent: create, the
// activation gate, activate, share-token checks, deactivate, reactivate, activate again, and the
// event trail that every transition leaves.

import { expect, it } from "vitest";
import { type Connection, Connection_State, ConnectionEvent_Type } from "../../gen/connections/v1/connection_pb.js";
import {
  CheckConnectionRequest_Action,
  CheckConnectionResponse_Reason,
} from "../../gen/connections/v1/connection_service_pb.js";
import { ms, present } from "../support/fixtures.js";
import { Code, describeE2E, expectRpcError, registerOrganizations, uniqueId } from "../support/service.js";

describeE2E("connection lifecycle", (e2e) => {
  it("registers organizations, with a generated org_ id when none is given", async () => {
    const provisioning = e2e.as("provisioning");
    const id = uniqueId("org_lc");
    const { organization } = await provisioning.createOrganization({ id, name: "Acme Inc." });
    expect(organization).toMatchObject({ id, name: "Acme Inc." });
    expect(ms(organization?.createTime)).toBeGreaterThan(0);

    const generated = present((await provisioning.createOrganization({ name: "Generated" })).organization);
    expect(generated.id).toMatch(/^org_[A-Za-z0-9_-]+$/);
    expect(generated.name).toBe("Generated");

    for (const caller of ["provisioning", "dashboard-bff"] as const) {
      const read = await e2e.as(caller).getOrganization({ id });
      expect(read.organization).toEqual(organization);
    }
  });

  it("goes PENDING -> ACTIVE -> INACTIVE -> PENDING -> ACTIVE with the right parties and callers", async () => {
    const [source = "", destination = ""] = await registerOrganizations(e2e.client(), 2, "org_lc");
    const sourceBff = e2e.as("dashboard-bff", source, "user:usr_alice");
    const sourceGateway = e2e.as("api-gateway", source, "api-key:api_9");
    const destinationBff = e2e.as("dashboard-bff", destination, "user:usr_bob");
    const destinationGateway = e2e.as("api-gateway", destination, "api-key:api_7");
    const tokenService = e2e.as("token-service");
    const requestIds = {
      create: uniqueId("rq-create"),
      activate: uniqueId("rq-activate"),
      deactivate: uniqueId("rq-deactivate"),
      reactivate: uniqueId("rq-reactivate"),
      reactivateAgain: uniqueId("rq-activate-again"),
    };

    // Create: PENDING, creator from x-actor, scopes sorted and deduplicated.
    const created = present(
      (
        await sourceBff.createConnection(
          {
            destinationOrganizationId: destination,
            scopes: ["transaction.read", "account.read", "transaction.read"],
            name: "Acme shares with Beta",
          },
          { requestId: requestIds.create },
        )
      ).connection,
    );
    expect(created.id).toMatch(/^cxn_[A-Za-z0-9_-]{16,}$/);
    expect(created).toMatchObject({
      sourceOrganizationId: source,
      destinationOrganizationId: destination,
      name: "Acme shares with Beta",
      scopes: ["account.read", "transaction.read"],
      state: Connection_State.PENDING,
      creator: "user:usr_alice",
    });
    expect(created.etag).not.toBe("");
    expect(ms(created.createTime)).toBeGreaterThan(0);
    expect(ms(created.updateTime)).toBeGreaterThanOrEqual(ms(created.createTime));
    expect(created.activateTime).toBeUndefined();
    expect(created.deactivateTime).toBeUndefined();

    // Both parties see the same Connection, through every caller that may read it.
    for (const session of [sourceGateway, destinationBff, destinationGateway, e2e.as("token-service", source)]) {
      expect((await session.getConnection({ id: created.id })).connection).toEqual(created);
    }

    // The activation gate: the API gateway may not activate, even for the destination.
    await expectRpcError(
      destinationGateway.activateConnection({ id: created.id }),
      Code.PermissionDenied,
      "CALLER_NOT_ALLOWED",
    );
    // The source may not activate.
    await expectRpcError(
      sourceBff.activateConnection({ id: created.id }),
      Code.PermissionDenied,
      "ONLY_DESTINATION_CAN_ACTIVATE",
    );
    expect((await sourceBff.getConnection({ id: created.id })).connection).toEqual(created);

    // The destination activates through the dashboard.
    const activated = present(
      (
        await destinationBff.activateConnection(
          { id: created.id, etag: created.etag },
          { requestId: requestIds.activate },
        )
      ).connection,
    );
    expect(activated.state).toBe(Connection_State.ACTIVE);
    expect(ms(activated.activateTime)).toBeGreaterThanOrEqual(ms(created.createTime));
    expect(activated.deactivateTime).toBeUndefined();
    expect(activated.etag).not.toBe(created.etag);
    expect(activated.createTime).toEqual(created.createTime);
    expect(ms(activated.updateTime)).toBeGreaterThanOrEqual(ms(created.updateTime));
    expect(activated.creator).toBe("user:usr_alice");

    // The token service: the source may issue, the destination may redeem.
    const issue = await tokenService.checkConnection({
      connectionId: created.id,
      organizationId: source,
      action: CheckConnectionRequest_Action.ISSUE_SHARE_TOKEN,
      scope: "account.read",
    });
    expect(issue).toMatchObject({
      allowed: true,
      reason: CheckConnectionResponse_Reason.ALLOWED,
      state: Connection_State.ACTIVE,
    });
    expect(issue.connection).toEqual(activated);
    const redeem = await tokenService.checkConnection({
      connectionId: created.id,
      organizationId: destination,
      action: CheckConnectionRequest_Action.REDEEM_SHARE_TOKEN,
      scope: "transaction.read",
    });
    expect(redeem).toMatchObject({ allowed: true, reason: CheckConnectionResponse_Reason.ALLOWED });
    expect(redeem.connection).toEqual(activated);

    // The destination deactivates (through the gateway): INACTIVE, and checks are refused at once.
    const deactivated = present(
      (
        await destinationGateway.deactivateConnection(
          { id: created.id, etag: activated.etag, reason: "customer revoked consent" },
          { requestId: requestIds.deactivate },
        )
      ).connection,
    );
    expect(deactivated.state).toBe(Connection_State.INACTIVE);
    expect(ms(deactivated.deactivateTime)).toBeGreaterThanOrEqual(ms(activated.activateTime));
    expect(deactivated.activateTime).toEqual(activated.activateTime);
    expect(deactivated.etag).not.toBe(activated.etag);
    await expectCheck(created.id, source, "ISSUE_SHARE_TOKEN", "NOT_ACTIVE", Connection_State.INACTIVE);
    await expectCheck(created.id, destination, "REDEEM_SHARE_TOKEN", "NOT_ACTIVE", Connection_State.INACTIVE);

    // Only the source reactivates.
    await expectRpcError(
      destinationBff.reactivateConnection({ id: created.id }),
      Code.PermissionDenied,
      "ONLY_SOURCE_CAN_REACTIVATE",
    );
    const reactivated = present(
      (
        await sourceGateway.reactivateConnection(
          { id: created.id, etag: deactivated.etag },
          { requestId: requestIds.reactivate },
        )
      ).connection,
    );
    expect(reactivated.state).toBe(Connection_State.PENDING);
    expect(reactivated.deactivateTime).toEqual(deactivated.deactivateTime);
    expect(reactivated.etag).not.toBe(deactivated.etag);
    // Re-consent: PENDING again, so nothing may be shared until the destination activates again.
    await expectCheck(created.id, source, "ISSUE_SHARE_TOKEN", "NOT_ACTIVE", Connection_State.PENDING);
    await expectRpcError(
      sourceGateway.reactivateConnection({ id: created.id }),
      Code.FailedPrecondition,
      "INVALID_STATE_TRANSITION",
      { state: "STATE_PENDING" },
    );

    const reactivatedAgain = present(
      (await destinationBff.activateConnection({ id: created.id }, { requestId: requestIds.reactivateAgain }))
        .connection,
    );
    expect(reactivatedAgain.state).toBe(Connection_State.ACTIVE);
    expect(ms(reactivatedAgain.activateTime)).toBeGreaterThanOrEqual(ms(activated.activateTime));
    expect(new Set([created, activated, deactivated, reactivated, reactivatedAgain].map((c) => c.etag)).size).toBe(5);
    await expectCheck(created.id, source, "ISSUE_SHARE_TOKEN", "ALLOWED", Connection_State.ACTIVE);
    await expectCheck(created.id, destination, "REDEEM_SHARE_TOKEN", "ALLOWED", Connection_State.ACTIVE);

    // The event trail: oldest first, an unbroken chain, who did what with which request.
    const trail = await sourceBff.listConnectionEvents({ connectionId: created.id });
    expect(trail.nextPageToken).toBe("");
    const expected = [
      [
        ConnectionEvent_Type.CREATED,
        "UNSPECIFIED",
        "PENDING",
        source,
        "dashboard-bff",
        "user:usr_alice",
        requestIds.create,
        "",
      ],
      [
        ConnectionEvent_Type.ACTIVATED,
        "PENDING",
        "ACTIVE",
        destination,
        "dashboard-bff",
        "user:usr_bob",
        requestIds.activate,
        "",
      ],
      [
        ConnectionEvent_Type.DEACTIVATED,
        "ACTIVE",
        "INACTIVE",
        destination,
        "api-gateway",
        "api-key:api_7",
        requestIds.deactivate,
        "customer revoked consent",
      ],
      [
        ConnectionEvent_Type.REACTIVATED,
        "INACTIVE",
        "PENDING",
        source,
        "api-gateway",
        "api-key:api_9",
        requestIds.reactivate,
        "",
      ],
      [
        ConnectionEvent_Type.ACTIVATED,
        "PENDING",
        "ACTIVE",
        destination,
        "dashboard-bff",
        "user:usr_bob",
        requestIds.reactivateAgain,
        "",
      ],
    ] as const;
    expect(
      trail.events.map((event) => [
        event.type,
        Connection_State[event.fromState],
        Connection_State[event.toState],
        event.actorOrganizationId,
        event.caller,
        event.actor,
        event.requestId,
        event.reason,
      ]),
    ).toEqual(expected);
    for (const [index, event] of trail.events.entries()) {
      expect(event.connectionId).toBe(created.id);
      expect(event.id).toMatch(/^evt_[A-Za-z0-9_-]+$/);
      const previous = trail.events[index - 1];
      if (previous !== undefined) {
        expect(event.fromState, "each event starts where the one before ended").toBe(previous.toState);
        expect(ms(event.createTime)).toBeGreaterThanOrEqual(ms(previous.createTime));
      }
    }
    expect(new Set(trail.events.map((event) => event.id)).size).toBe(5);
    expect(ms(trail.events[0]?.createTime)).toBe(ms(created.createTime));
    expect(ms(trail.events[4]?.createTime)).toBe(ms(reactivatedAgain.updateTime));

    // The destination sees the same trail; both list the Connection on their side.
    expect((await destinationGateway.listConnectionEvents({ connectionId: created.id })).events).toEqual(trail.events);
    const outbound = await sourceBff.listConnections({});
    expect(outbound.connections).toEqual([reactivatedAgain]);
    const inbound = await destinationBff.listConnections({});
    expect(inbound.connections).toEqual([reactivatedAgain]);
  });

  it("lets the source deactivate a PENDING connection and checks see it at once", async () => {
    const [source = "", destination = ""] = await registerOrganizations(e2e.client(), 2, "org_lc");
    const source_ = e2e.as("api-gateway", source);
    const created = present(
      (await source_.createConnection({ destinationOrganizationId: destination, scopes: ["inquiry.read"] })).connection,
    );
    expect(created.creator, "no x-actor, no creator").toBe("");
    const deactivated = present((await source_.deactivateConnection({ id: created.id })).connection);
    expect(deactivated.state).toBe(Connection_State.INACTIVE);
    expect(deactivated.activateTime).toBeUndefined();
    await expectRpcError(
      e2e.as("dashboard-bff", destination).activateConnection({ id: created.id }),
      Code.FailedPrecondition,
      "INVALID_STATE_TRANSITION",
      { state: "STATE_INACTIVE" },
    );
    const events = (await source_.listConnectionEvents({ connectionId: created.id })).events;
    expect(events.map((event) => [ConnectionEvent_Type[event.type], event.reason, event.actor])).toEqual([
      ["CREATED", "", ""],
      ["DEACTIVATED", "", ""],
    ]);
  });

  async function expectCheck(
    connectionId: string,
    organizationId: string,
    action: keyof typeof CheckConnectionRequest_Action,
    reason: keyof typeof CheckConnectionResponse_Reason,
    state: Connection_State,
  ): Promise<Connection | undefined> {
    const answer = await e2e.as("token-service").checkConnection({
      connectionId,
      organizationId,
      action: CheckConnectionRequest_Action[action],
      scope: "account.read",
    });
    expect({ allowed: answer.allowed, reason: CheckConnectionResponse_Reason[answer.reason] }).toEqual({
      allowed: reason === "ALLOWED",
      reason,
    });
    expect(answer.state).toBe(state);
    expect(answer.connection?.state).toBe(state);
    return answer.connection;
  }
});
