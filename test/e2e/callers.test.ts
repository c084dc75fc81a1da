// The caller table of API.md, cell by cell: each of the 4 callers against each of the 13 RPCs.
// An allowed call is made so that it succeeds; a refused one fails with PERMISSION_DENIED
// CALLER_NOT_ALLOWED and changes nothing.

import { expect, it } from "vitest";
import { Connection_State } from "../../gen/connections/v1/connection_pb.js";
import { CheckConnectionRequest_Action } from "../../gen/connections/v1/connection_service_pb.js";
import { type ConnectionFixture, connectionFixture, eventCount, reread } from "../support/fixtures.js";
import {
  CALLERS,
  type Caller,
  Code,
  describeE2E,
  type E2E,
  expectRpcError,
  RPC_NAMES,
  type RpcName,
  registerOrganizations,
  uniqueId,
} from "../support/service.js";

/** API.md, "Callers and headers", written out independently of src/api/policy.ts. */
const MAY_CALL: Readonly<Record<Caller, readonly RpcName[]>> = {
  "dashboard-bff": [
    "createConnection",
    "getConnection",
    "listConnections",
    "activateConnection",
    "deactivateConnection",
    "reactivateConnection",
    "updateConnection",
    "listConnectionEvents",
    "watchConnectionEvents",
    "getOrganization",
  ],
  "api-gateway": [
    "createConnection",
    "getConnection",
    "listConnections",
    "updateConnection",
    "deactivateConnection",
    "reactivateConnection",
    "listConnectionEvents",
    "watchConnectionEvents",
  ],
  "token-service": ["checkConnection", "batchCheckConnection", "getConnection", "watchConnectionEvents"],
  provisioning: ["createOrganization", "getOrganization"],
};

interface Cell {
  /** Makes the call as `caller`; it succeeds when the caller may make it. */
  readonly run: (caller: Caller) => Promise<unknown>;
  /** After a refusal: asserts that nothing changed. */
  readonly unchanged: () => Promise<void>;
}

/** For each RPC, a fresh fixture and a call that succeeds for every caller allowed to make it. */
async function prepare(e2e: E2E, rpc: RpcName): Promise<Cell> {
  const client = e2e.client();
  const nothing = async () => {};
  const stays = (fixture: ConnectionFixture, events: number) => async () => {
    expect(await reread(client, fixture)).toEqual(fixture.connection);
    expect(await eventCount(client, fixture)).toBe(events);
  };
  switch (rpc) {
    case "createConnection": {
      const [source = "", destination = ""] = await registerOrganizations(client, 2);
      return {
        run: (caller) =>
          e2e.as(caller, source).createConnection({ destinationOrganizationId: destination, scopes: ["account.read"] }),
        unchanged: async () => {
          expect((await e2e.as("dashboard-bff", source).listConnections({})).connections).toEqual([]);
        },
      };
    }
    case "getConnection": {
      const fixture = await connectionFixture(client);
      return {
        run: (caller) => e2e.as(caller, fixture.source).getConnection({ id: fixture.connection.id }),
        unchanged: nothing,
      };
    }
    case "listConnections": {
      const fixture = await connectionFixture(client);
      return { run: (caller) => e2e.as(caller, fixture.destination).listConnections({}), unchanged: nothing };
    }
    case "activateConnection": {
      const fixture = await connectionFixture(client);
      return {
        run: (caller) => e2e.as(caller, fixture.destination).activateConnection({ id: fixture.connection.id }),
        unchanged: stays(fixture, 1),
      };
    }
    case "deactivateConnection": {
      const fixture = await connectionFixture(client, { state: "ACTIVE" });
      return {
        run: (caller) => e2e.as(caller, fixture.destination).deactivateConnection({ id: fixture.connection.id }),
        unchanged: stays(fixture, 2),
      };
    }
    case "reactivateConnection": {
      const fixture = await connectionFixture(client, { state: "INACTIVE" });
      return {
        run: (caller) => e2e.as(caller, fixture.source).reactivateConnection({ id: fixture.connection.id }),
        unchanged: stays(fixture, 2),
      };
    }
    case "listConnectionEvents": {
      const fixture = await connectionFixture(client);
      return {
        run: (caller) => e2e.as(caller, fixture.source).listConnectionEvents({ connectionId: fixture.connection.id }),
        unchanged: nothing,
      };
    }
    case "watchConnectionEvents": {
      const fixture = await connectionFixture(client);
      return {
        run: (caller) => e2e.as(caller, fixture.source).watchConnectionEvents({}),
        unchanged: nothing,
      };
    }
    case "checkConnection": {
      const fixture = await connectionFixture(client, { state: "ACTIVE" });
      return {
        run: (caller) =>
          e2e.as(caller).checkConnection({
            connectionId: fixture.connection.id,
            organizationId: fixture.source,
            action: CheckConnectionRequest_Action.ISSUE_SHARE_TOKEN,
            scope: "account.read",
          }),
        unchanged: nothing,
      };
    }
    case "updateConnection": {
      const fixture = await connectionFixture(client);
      let name = 0;
      return {
        run: (caller) =>
          e2e.as(caller, fixture.source).updateConnection({
            connection: { id: fixture.connection.id, name: `Renamed ${++name}` },
            updateMask: { paths: ["name"] },
          }),
        unchanged: stays(fixture, 1),
      };
    }
    case "batchCheckConnection": {
      const fixture = await connectionFixture(client, { state: "ACTIVE" });
      return {
        run: (caller) =>
          e2e.as(caller).batchCheckConnection({
            checks: [
              {
                connectionId: fixture.connection.id,
                organizationId: fixture.source,
                action: CheckConnectionRequest_Action.ISSUE_SHARE_TOKEN,
                scope: "account.read",
              },
            ],
          }),
        unchanged: nothing,
      };
    }
    case "createOrganization": {
      const id = uniqueId("org_matrix");
      return {
        run: (caller) => e2e.as(caller).createOrganization({ id, name: "Matrix" }),
        unchanged: () =>
          expectRpcError(e2e.as("provisioning").getOrganization({ id }), Code.NotFound, "ORGANIZATION_NOT_FOUND").then(
            () => undefined,
          ),
      };
    }
    case "getOrganization": {
      const [org = ""] = await registerOrganizations(client, 1);
      return { run: (caller) => e2e.as(caller).getOrganization({ id: org }), unchanged: nothing };
    }
    default:
      throw new Error(`no matrix cell for ${rpc}`);
  }
}

describeE2E("caller x RPC matrix", (e2e) => {
  it("covers the 13 RPCs of the contract", () => {
    expect([...RPC_NAMES].sort()).toEqual(
      [
        "activateConnection",
        "batchCheckConnection",
        "updateConnection",
        "checkConnection",
        "createConnection",
        "createOrganization",
        "deactivateConnection",
        "getConnection",
        "getOrganization",
        "listConnectionEvents",
        "listConnections",
        "reactivateConnection",
        "watchConnectionEvents",
      ].sort(),
    );
  });

  for (const caller of CALLERS) {
    it(`${caller}: exactly the RPCs that API.md allows`, async () => {
      const outcomes: Record<string, string> = {};
      const expected: Record<string, string> = {};
      for (const rpc of RPC_NAMES) {
        const allowed = MAY_CALL[caller].includes(rpc);
        expected[rpc] = allowed ? "OK" : "PermissionDenied CALLER_NOT_ALLOWED";
        const cell = await prepare(e2e, rpc);
        outcomes[rpc] = await cell.run(caller).then(
          () => "OK",
          (error: { code?: Code; reason?: string; message?: string }) =>
            error.code === Code.PermissionDenied && error.reason === "CALLER_NOT_ALLOWED"
              ? "PermissionDenied CALLER_NOT_ALLOWED"
              : `${Code[error.code ?? Code.Unknown]} ${error.reason ?? ""}: ${error.message ?? String(error)}`,
        );
        if (!allowed) await cell.unchanged();
      }
      expect(outcomes).toEqual(expected);
    });
  }

  it("refuses a caller before it looks at the organization header or the request", async () => {
    const fixture = await connectionFixture(e2e.client());
    for (const caller of ["api-gateway", "token-service", "provisioning"] as const) {
      for (const organizationId of [undefined, "", "not an id!", uniqueId("org_unregistered")]) {
        await expectRpcError(
          e2e
            .client()
            .call(
              "activateConnection",
              { id: "garbage" },
              { caller, ...(organizationId === undefined ? {} : { organizationId }) },
            ),
          Code.PermissionDenied,
          "CALLER_NOT_ALLOWED",
        );
      }
    }
    await expectRpcError(
      e2e.as("provisioning").checkConnection({ connectionId: "x", organizationId: "" }),
      Code.PermissionDenied,
      "CALLER_NOT_ALLOWED",
    );
    expect((await reread(e2e.client(), fixture)).state).toBe(Connection_State.PENDING);
  });

  it("authenticates before anything else, on every RPC", async () => {
    for (const rpc of RPC_NAMES) {
      await expectRpcError(
        e2e.client().call(rpc, {}, { caller: null, organizationId: "not registered" }),
        Code.Unauthenticated,
        "CALLER_UNAUTHENTICATED",
      );
      await expectRpcError(
        e2e.client().call(rpc, {}, { authorization: "Bearer dev-someone-else" }),
        Code.Unauthenticated,
        "CALLER_UNAUTHENTICATED",
      );
    }
  });
});
