// A Connection is visible to its two parties only. Any other organization is told it does not
// exist (the same answer as for an id that nobody has), whatever it tries, and learns nothing
// from CheckConnection either.

import { expect, it } from "vitest";
import { Connection_State } from "../../gen/connections/v1/connection_pb.js";
import {
  CheckConnectionRequest_Action,
  CheckConnectionResponse_Reason,
} from "../../gen/connections/v1/connection_service_pb.js";
import { connectionFixture, eventCount, reread, type StateName } from "../support/fixtures.js";
import { Code, describeE2E, expectRpcError, registerOrganizations } from "../support/service.js";

describeE2E("visibility to a third organization", (e2e) => {
  for (const state of ["PENDING", "ACTIVE", "INACTIVE"] as const satisfies readonly StateName[]) {
    it(`hides a ${state} connection from a stranger`, async () => {
      const client = e2e.client();
      const fixture = await connectionFixture(client, { state });
      const [stranger = ""] = await registerOrganizations(client, 1, "org_stranger");
      const id = fixture.connection.id;
      const events = await eventCount(client, fixture);

      for (const caller of ["dashboard-bff", "api-gateway", "token-service"] as const) {
        await expectRpcError(e2e.as(caller, stranger).getConnection({ id }), Code.NotFound, "CONNECTION_NOT_FOUND");
      }
      const bff = e2e.as("dashboard-bff", stranger);
      const gateway = e2e.as("api-gateway", stranger);
      // Every transition, with and without a (stale or current) etag: NOT_FOUND, never a hint
      // that the id exists (no PERMISSION_DENIED, FAILED_PRECONDITION or ABORTED).
      for (const etag of ["", fixture.connection.etag, '"999"']) {
        await expectRpcError(bff.activateConnection({ id, etag }), Code.NotFound, "CONNECTION_NOT_FOUND");
        await expectRpcError(gateway.deactivateConnection({ id, etag }), Code.NotFound, "CONNECTION_NOT_FOUND");
        await expectRpcError(bff.deactivateConnection({ id, etag }), Code.NotFound, "CONNECTION_NOT_FOUND");
        await expectRpcError(gateway.reactivateConnection({ id, etag }), Code.NotFound, "CONNECTION_NOT_FOUND");
      }
      await expectRpcError(bff.listConnectionEvents({ connectionId: id }), Code.NotFound, "CONNECTION_NOT_FOUND");
      await expectRpcError(
        gateway.listConnectionEvents({ connectionId: id, pageSize: 1 }),
        Code.NotFound,
        "CONNECTION_NOT_FOUND",
      );
      expect((await bff.listConnections({})).connections).toEqual([]);

      // The same answer as for an id nobody has (only the id in the message differs).
      const unknownId = `cxn_${"Z".repeat(id.length - 4)}`;
      const hidden = await expectRpcError(bff.getConnection({ id }), Code.NotFound, "CONNECTION_NOT_FOUND");
      const unknown = await expectRpcError(bff.getConnection({ id: unknownId }), Code.NotFound, "CONNECTION_NOT_FOUND");
      expect(hidden.rawMessage.replace(id, "<id>")).toBe(unknown.rawMessage.replace(unknownId, "<id>"));
      expect(hidden.metadata).toEqual(unknown.metadata);

      // The check answers WRONG_ORGANIZATION for both actions, without the Connection or its state.
      for (const action of [
        CheckConnectionRequest_Action.ISSUE_SHARE_TOKEN,
        CheckConnectionRequest_Action.REDEEM_SHARE_TOKEN,
      ]) {
        const answer = await e2e.as("token-service").checkConnection({
          connectionId: id,
          organizationId: stranger,
          action,
          scope: "account.read",
        });
        expect(answer.allowed).toBe(false);
        expect(CheckConnectionResponse_Reason[answer.reason]).toBe("WRONG_ORGANIZATION");
        expect(answer.state).toBe(Connection_State.UNSPECIFIED);
        expect(answer.connection).toBeUndefined();
      }

      // Nothing changed.
      expect(await reread(client, fixture)).toEqual(fixture.connection);
      expect(await eventCount(client, fixture)).toBe(events);
    });
  }

  it("shows each organization only the connections it is a party to", async () => {
    const client = e2e.client();
    const [a = "", b = "", c = ""] = await registerOrganizations(client, 3);
    const ab = (
      await e2e.as("dashboard-bff", a).createConnection({ destinationOrganizationId: b, scopes: ["account.read"] })
    ).connection;
    const bc = (
      await e2e.as("dashboard-bff", b).createConnection({ destinationOrganizationId: c, scopes: ["account.read"] })
    ).connection;
    const ids = async (org: string) =>
      (await e2e.as("api-gateway", org).listConnections({})).connections.map((connection) => connection.id);
    expect(await ids(a)).toEqual([ab?.id]);
    expect(await ids(b)).toEqual([bc?.id, ab?.id]);
    expect(await ids(c)).toEqual([bc?.id]);
    await expectRpcError(
      e2e.as("dashboard-bff", c).getConnection({ id: ab?.id ?? "" }),
      Code.NotFound,
      "CONNECTION_NOT_FOUND",
    );
    await expectRpcError(
      e2e.as("dashboard-bff", a).getConnection({ id: bc?.id ?? "" }),
      Code.NotFound,
      "CONNECTION_NOT_FOUND",
    );
  });
});
