// Thin handlers of connections.v1.ConnectionService: validate the wire request, call the use case,
// map the result. Callers and the acting organization were established by the pipeline.

import { Connection_State } from "../../gen/connections/v1/connection_pb.js";
import {
  CheckConnectionRequest_Action,
  CheckConnectionResponse_Reason,
  type ConnectionService,
  ListConnectionsRequest_Direction,
} from "../../gen/connections/v1/connection_service_pb.js";
import type { Actor, Connections } from "../app/connections.js";
import type { Transition } from "../domain/connection.js";
import { connectionToProto, eventToProto, stateToProto } from "./convert.js";
import type { Call, UnaryHandlers } from "./rpc.js";
import * as validate from "./validate.js";

type Handlers = UnaryHandlers<(typeof ConnectionService)["method"]>;

function actorOf(call: Call): Actor {
  return {
    organizationId: call.organizationId,
    caller: call.caller,
    actor: call.actor,
    requestId: call.requestId,
    signal: call.signal,
  };
}

export function connectionServiceHandlers(connections: Connections): Handlers {
  const transition =
    (kind: Transition) => async (request: { id: string; etag: string; reason?: string }, call: Call) => {
      const connection = await connections.transition(actorOf(call), validate.connectionId("id", request.id), kind, {
        etag: validate.etag(request.etag),
        reason: validate.reason(request.reason ?? ""),
      });
      return { connection: connectionToProto(connection) };
    };

  return {
    async createConnection(request, call) {
      const connection = await connections.create(actorOf(call), {
        destinationOrganizationId: validate.organizationId(
          "destination_organization_id",
          request.destinationOrganizationId,
        ),
        scopes: request.scopes,
        name: validate.name(request.name),
        requestId: validate.requestId(request.requestId),
      });
      return { connection: connectionToProto(connection) };
    },

    async getConnection(request, call) {
      const connection = await connections.get(call.organizationId, validate.connectionId("id", request.id));
      return { connection: connectionToProto(connection) };
    },

    async listConnections(request, call) {
      const direction =
        request.direction === ListConnectionsRequest_Direction.UNSPECIFIED
          ? "BOTH"
          : validate.enumValue("direction", request.direction, ListConnectionsRequest_Direction, [
              "OUTBOUND",
              "INBOUND",
            ]);
      const states = request.states.map((state) =>
        validate.enumValue("states", state, Connection_State, validate.STATES),
      );
      const page = await connections.list(
        call.organizationId,
        { direction, states },
        { pageSize: request.pageSize, pageToken: request.pageToken },
      );
      return { connections: page.connections.map(connectionToProto), nextPageToken: page.nextPageToken };
    },

    activateConnection: transition("ACTIVATE"),
    deactivateConnection: transition("DEACTIVATE"),
    reactivateConnection: transition("REACTIVATE"),

    async listConnectionEvents(request, call) {
      const page = await connections.listEvents(
        call.organizationId,
        validate.connectionId("connection_id", request.connectionId),
        { pageSize: request.pageSize, pageToken: request.pageToken },
      );
      return { events: page.events.map(eventToProto), nextPageToken: page.nextPageToken };
    },

    async checkConnection(request) {
      const { decision, connection } = await connections.check(
        validate.connectionId("connection_id", request.connectionId),
        validate.organizationId("organization_id", request.organizationId),
        validate.enumValue("action", request.action, CheckConnectionRequest_Action, [
          "ISSUE_SHARE_TOKEN",
          "REDEEM_SHARE_TOKEN",
        ]),
        validate.scope(request.scope),
      );
      return {
        allowed: decision.allowed,
        reason: CheckConnectionResponse_Reason[decision.reason],
        state: connection === undefined ? Connection_State.UNSPECIFIED : stateToProto(connection.state),
        connection: connection && connectionToProto(connection),
      };
    },
  };
}
