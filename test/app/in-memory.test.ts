// The fast layer for src/app and src/api: the service's own composition (composeRpcs: handlers,
// use cases, the pipeline's caller policy and error mapping) on SQLite in memory, called through
// connect's createRouterTransport: no port, no HTTP, no process. Behaviour that does not depend on
// the wire is cheapest to pin here; the end-to-end suites prove the same through real servers.

import { createRouterTransport } from "@connectrpc/connect";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Connection_State } from "../../gen/connections/v1/connection_pb.js";
import {
  CheckConnectionRequest_Action,
  CheckConnectionResponse_Reason,
} from "../../gen/connections/v1/connection_service_pb.js";
import { CallerAuthenticator } from "../../src/api/callers.js";
import { type ComposedRpcs, composeRpcs } from "../../src/composition/start-service.js";
import { loadConfig } from "../../src/config/config.js";
import { openStore } from "../../src/store/open.js";
import type { Store } from "../../src/store/store.js";
import { routePipeline } from "../../src/transport/connect-routes.js";
import { connect, present } from "../support/fixtures.js";
import { Code, expectRpcError, type RpcClient, registerOrganizations, transportRpcClient } from "../support/service.js";

describe("the service in memory (router transport, SQLite in memory)", () => {
  let store: Store;
  let rpcs: ComposedRpcs;
  let client: RpcClient;

  beforeAll(async () => {
    store = await openStore({ databaseUrl: "sqlite::memory:" });
    rpcs = composeRpcs(store, CallerAuthenticator.dev(), loadConfig({}), pino({ level: "silent" }));
    client = transportRpcClient(createRouterTransport((router) => routePipeline(router, rpcs.pipeline)));
  });

  afterAll(async () => {
    rpcs.feed.shutDown();
    await client.close();
    await store.close();
  });

  it("gates consent to the dashboard and answers checks by state", async () => {
    const [source = "", destination = ""] = await registerOrganizations(client, 2, "org_mem");
    const created = await connect(client, source, destination, { scopes: ["account.read"] });
    expect(created.state).toBe(Connection_State.PENDING);
    await expectRpcError(
      client.as({ caller: "api-gateway", organizationId: destination }).activateConnection({ id: created.id }),
      Code.PermissionDenied,
      "CALLER_NOT_ALLOWED",
    );
    const check = (scope: string) =>
      client.as({ caller: "token-service" }).checkConnection({
        connectionId: created.id,
        organizationId: source,
        action: CheckConnectionRequest_Action.ISSUE_SHARE_TOKEN,
        scope,
      });
    expect((await check("account.read")).reason).toBe(CheckConnectionResponse_Reason.NOT_ACTIVE);
    const activated = present(
      (await client.as({ caller: "dashboard-bff", organizationId: destination }).activateConnection({ id: created.id }))
        .connection,
    );
    expect(activated.state).toBe(Connection_State.ACTIVE);
    expect(await check("account.read")).toMatchObject({
      allowed: true,
      reason: CheckConnectionResponse_Reason.ALLOWED,
    });
    expect((await check("inquiry.read")).reason).toBe(CheckConnectionResponse_Reason.SCOPE_NOT_GRANTED);
  });

  it("hides a Connection from a third organization and names the invalid field", async () => {
    const [source = "", destination = "", stranger = ""] = await registerOrganizations(client, 3, "org_mem");
    const created = await connect(client, source, destination);
    await expectRpcError(
      client.as({ caller: "api-gateway", organizationId: stranger }).getConnection({ id: created.id }),
      Code.NotFound,
      "CONNECTION_NOT_FOUND",
    );
    await expectRpcError(
      client
        .as({ caller: "api-gateway", organizationId: source })
        .createConnection({ destinationOrganizationId: destination, scopes: ["everything.write"] }),
      Code.InvalidArgument,
      "UNKNOWN_SCOPE",
    );
  });
});
