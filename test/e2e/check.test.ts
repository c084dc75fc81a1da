// CheckConnection, the token service's question: its reasons are decided in the contract's order
// (CONNECTION_NOT_FOUND, WRONG_ORGANIZATION, NOT_ACTIVE, SCOPE_NOT_GRANTED, ALLOWED), a denial is
// an answer and not an error, and the Connection is only shown to a party.

import { expect, it } from "vitest";
import { Connection_State } from "../../gen/connections/v1/connection_pb.js";
import {
  CheckConnectionRequest_Action as Action,
  type CheckConnectionResponse,
  CheckConnectionResponse_Reason as Reason,
} from "../../gen/connections/v1/connection_service_pb.js";
import { connectionFixture, present } from "../support/fixtures.js";
import { describeE2E, registerOrganizations, uniqueId } from "../support/service.js";

describeE2E("CheckConnection", (e2e) => {
  const check = (connectionId: string, organizationId: string, action: Action, scope: string) =>
    e2e.as("token-service").checkConnection({ connectionId, organizationId, action, scope });

  const summary = (answer: CheckConnectionResponse) => ({
    allowed: answer.allowed,
    reason: Reason[answer.reason],
    state: Connection_State[answer.state],
    connection: answer.connection?.id ?? "(none)",
  });

  it("CONNECTION_NOT_FOUND for a well-formed id that nobody has", async () => {
    const [org = ""] = await registerOrganizations(e2e.client(), 1);
    for (const action of [Action.ISSUE_SHARE_TOKEN, Action.REDEEM_SHARE_TOKEN]) {
      const answer = await check(`cxn_${uniqueId("missing")}`, org, action, "account.read");
      expect(summary(answer)).toEqual({
        allowed: false,
        reason: "CONNECTION_NOT_FOUND",
        state: "UNSPECIFIED",
        connection: "(none)",
      });
    }
  });

  it("decides WRONG_ORGANIZATION before NOT_ACTIVE and SCOPE_NOT_GRANTED", async () => {
    // PENDING, and the scope is not granted: the organization is still the first thing wrong.
    const { source, destination, connection } = await connectionFixture(e2e.client(), { scopes: ["inquiry.read"] });
    const [stranger = ""] = await registerOrganizations(e2e.client(), 1);
    const unregistered = uniqueId("org_unregistered");
    const cases = [
      { organizationId: destination, action: Action.ISSUE_SHARE_TOKEN, party: true },
      { organizationId: source, action: Action.REDEEM_SHARE_TOKEN, party: true },
      { organizationId: stranger, action: Action.ISSUE_SHARE_TOKEN, party: false },
      { organizationId: stranger, action: Action.REDEEM_SHARE_TOKEN, party: false },
      { organizationId: unregistered, action: Action.ISSUE_SHARE_TOKEN, party: false },
    ];
    for (const { organizationId, action, party } of cases) {
      const answer = await check(connection.id, organizationId, action, "account.read");
      expect(summary(answer), `${organizationId} ${Action[action]}`).toEqual({
        allowed: false,
        reason: "WRONG_ORGANIZATION",
        state: party ? "PENDING" : "UNSPECIFIED",
        connection: party ? connection.id : "(none)",
      });
      if (party) expect(answer.connection).toEqual(connection);
    }
  });

  it("decides NOT_ACTIVE before SCOPE_NOT_GRANTED, for PENDING and INACTIVE", async () => {
    for (const state of ["PENDING", "INACTIVE"] as const) {
      const { source, destination, connection } = await connectionFixture(e2e.client(), {
        state,
        scopes: ["inquiry.read"],
      });
      for (const [organizationId, action] of [
        [source, Action.ISSUE_SHARE_TOKEN],
        [destination, Action.REDEEM_SHARE_TOKEN],
      ] as const) {
        for (const scope of ["inquiry.read", "verification.read"]) {
          const answer = await check(connection.id, organizationId, action, scope);
          expect(summary(answer)).toEqual({ allowed: false, reason: "NOT_ACTIVE", state, connection: connection.id });
          expect(answer.connection).toEqual(connection);
        }
      }
    }
  });

  it("decides SCOPE_NOT_GRANTED, then ALLOWED, on an ACTIVE connection", async () => {
    const { source, destination, connection } = await connectionFixture(e2e.client(), {
      state: "ACTIVE",
      scopes: ["account.read", "verification.read"],
    });
    for (const [organizationId, action] of [
      [source, Action.ISSUE_SHARE_TOKEN],
      [destination, Action.REDEEM_SHARE_TOKEN],
    ] as const) {
      for (const scope of ["inquiry.read", "transaction.read"]) {
        expect(summary(await check(connection.id, organizationId, action, scope))).toEqual({
          allowed: false,
          reason: "SCOPE_NOT_GRANTED",
          state: "ACTIVE",
          connection: connection.id,
        });
      }
      for (const scope of ["account.read", "verification.read"]) {
        const answer = await check(connection.id, organizationId, action, scope);
        expect(summary(answer)).toEqual({
          allowed: true,
          reason: "ALLOWED",
          state: "ACTIVE",
          connection: connection.id,
        });
        expect(answer.connection).toEqual(connection);
      }
    }
  });

  it("reflects every transition as soon as it has returned (read-after-write)", async () => {
    const fixture = await connectionFixture(e2e.client(), { scopes: ["account.read"] });
    const { source, destination } = fixture;
    const id = fixture.connection.id;
    const issue = async () => summary(await check(id, source, Action.ISSUE_SHARE_TOKEN, "account.read"));
    // Prime whatever the service may cache with the PENDING state first.
    expect((await issue()).reason).toBe("NOT_ACTIVE");
    for (let round = 0; round < 3; round++) {
      await e2e.as("dashboard-bff", destination).activateConnection({ id });
      expect(await issue()).toMatchObject({ allowed: true, reason: "ALLOWED", state: "ACTIVE" });
      const side = round % 2 === 0 ? source : destination;
      await e2e.as("api-gateway", side).deactivateConnection({ id });
      expect(await issue()).toMatchObject({ allowed: false, reason: "NOT_ACTIVE", state: "INACTIVE" });
      await e2e.as("api-gateway", source).reactivateConnection({ id });
      expect(await issue()).toMatchObject({ allowed: false, reason: "NOT_ACTIVE", state: "PENDING" });
    }
    // Many checks at once all see the same, current answer.
    const activated = present((await e2e.as("dashboard-bff", destination).activateConnection({ id })).connection);
    const answers = await Promise.all(
      Array.from({ length: 40 }, (_, index) =>
        check(
          id,
          index % 2 === 0 ? source : destination,
          index % 2 === 0 ? Action.ISSUE_SHARE_TOKEN : Action.REDEEM_SHARE_TOKEN,
          "account.read",
        ),
      ),
    );
    for (const answer of answers) {
      expect(summary(answer)).toEqual({ allowed: true, reason: "ALLOWED", state: "ACTIVE", connection: id });
      expect(answer.connection?.etag).toBe(activated.etag);
    }
  });
});
