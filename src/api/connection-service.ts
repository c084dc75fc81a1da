// Thin handlers of connections.v1.ConnectionService: validate the wire request, call the use case,
// map the result. Callers and the acting organization were established by the pipeline.

import {
  create,
  type DescMessage,
  type DescMethodUnary,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import { Connection_State } from "../../gen/connections/v1/connection_pb.js";
import {
  type ActivateConnectionRequestSchema,
  type CheckConnectionRequest,
  CheckConnectionRequest_Action,
  type CheckConnectionResponse,
  CheckConnectionResponse_Reason,
  CheckConnectionResponseSchema,
  ConnectionService,
  type DeactivateConnectionRequestSchema,
  ListConnectionsRequest_Direction,
  type ReactivateConnectionRequestSchema,
} from "../../gen/connections/v1/connection_service_pb.js";
import type { Actor, CheckRequest, CheckResult, Connections } from "../app/connections.js";
import { invalidArgument } from "../app/errors.js";
import type { Transition } from "../domain/connection.js";
import type { ConnectionRecord } from "../store/store.js";
import { connectionToProto, eventToProto, stateToProto } from "./convert.js";
import type { AnswerFor, IdempotentWrites } from "./idempotency.js";
import type { Call, ServiceHandlers } from "./rpc/types.js";
import * as validate from "./validate.js";

/** The requests of the three transitions: an id, an optional etag, and (deactivation) a reason. */
type TransitionRequestSchema =
  | typeof ActivateConnectionRequestSchema
  | typeof DeactivateConnectionRequestSchema
  | typeof ReactivateConnectionRequestSchema;

/** The change feed's handler lives in feed-service.ts. */
type Handlers = Omit<ServiceHandlers<(typeof ConnectionService)["method"]>, "watchConnectionEvents">;

/** The most checks that one BatchCheckConnection may carry. */
export const MAX_BATCH_CHECKS = 100;

/** The fields of a Connection that UpdateConnection may change (its update_mask paths). */
const MUTABLE_FIELDS = ["name", "scopes"] as const;

function actorOf(call: Call, answerFor?: AnswerFor<ConnectionRecord>): Actor {
  return {
    organizationId: call.organizationId,
    caller: call.caller,
    actor: call.actor,
    requestId: call.requestId,
    signal: call.signal,
    answerFor,
  };
}

/** Request ids of Connection writes belong to the acting organization, whichever caller sends them. */
function scopeOf(call: Call): string {
  return `organization:${call.organizationId}`;
}

/** The response of a write: every Connection write answers `{ connection }`. */
function connectionResponse<O extends DescMessage>(schema: O) {
  return (connection: ConnectionRecord): MessageShape<O> =>
    create(schema, { connection: connectionToProto(connection) } as unknown as MessageInitShape<O>);
}

/** A CheckConnectionRequest, alone or inside a batch (`prefix` "checks[3]." names its fields there). */
function checkRequest(request: CheckConnectionRequest, prefix: string): CheckRequest {
  return {
    connectionId: validate.connectionId(`${prefix}connection_id`, request.connectionId),
    organizationId: validate.organizationId(`${prefix}organization_id`, request.organizationId),
    action: validate.enumValue(`${prefix}action`, request.action, CheckConnectionRequest_Action, [
      "ISSUE_SHARE_TOKEN",
      "REDEEM_SHARE_TOKEN",
    ]),
    scope: validate.scope(`${prefix}scope`, request.scope),
  };
}

/** A message, not an init shape: the pipeline's create() passes it through instead of copying it by reflection. */
function checkResponse({ decision, connection }: CheckResult): CheckConnectionResponse {
  return {
    $typeName: CheckConnectionResponseSchema.typeName,
    allowed: decision.allowed,
    reason: CheckConnectionResponse_Reason[decision.reason],
    state: connection === undefined ? Connection_State.UNSPECIFIED : stateToProto(connection.state),
    connection: connection && connectionToProto(connection),
  };
}

export function connectionServiceHandlers(connections: Connections, writes: IdempotentWrites): Handlers {
  const methods = ConnectionService.method;
  const transition =
    <I extends TransitionRequestSchema, O extends DescMessage>(kind: Transition, method: DescMethodUnary<I, O>) =>
    (request: MessageShape<I>, call: Call) =>
      writes.run(method, scopeOf(call), request, connectionResponse(method.output), (answerFor) =>
        connections.transition(actorOf(call, answerFor), validate.connectionId("id", request.id), kind, {
          etag: validate.etag(request.etag),
          reason: validate.reason("reason" in request ? request.reason : ""),
        }),
      );

  return {
    createConnection: (request, call) =>
      writes.run(
        methods.createConnection,
        scopeOf(call),
        request,
        connectionResponse(methods.createConnection.output),
        (answerFor) =>
          connections.create(actorOf(call, answerFor), {
            destinationOrganizationId: validate.organizationId(
              "destination_organization_id",
              request.destinationOrganizationId,
            ),
            scopes: request.scopes,
            name: validate.name(request.name),
            requestId: request.requestId,
          }),
      ),

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

    activateConnection: transition("ACTIVATE", methods.activateConnection),
    deactivateConnection: transition("DEACTIVATE", methods.deactivateConnection),
    reactivateConnection: transition("REACTIVATE", methods.reactivateConnection),

    async listConnectionEvents(request, call) {
      const page = await connections.listEvents(
        call.organizationId,
        validate.connectionId("connection_id", request.connectionId),
        { pageSize: request.pageSize, pageToken: request.pageToken },
      );
      return { events: page.events.map(eventToProto), nextPageToken: page.nextPageToken };
    },

    async checkConnection(request) {
      return checkResponse(await connections.check(checkRequest(request, "")));
    },

    updateConnection: (request, call) =>
      writes.run(
        methods.updateConnection,
        scopeOf(call),
        request,
        connectionResponse(methods.updateConnection.output),
        (answerFor) => {
          const wanted = request.connection;
          if (wanted === undefined) {
            throw invalidArgument("connection", "connection is required: its id and the fields named in update_mask");
          }
          const id = validate.connectionId("connection.id", wanted.id);
          const mask = validate.updateMask("update_mask", request.updateMask?.paths ?? [], MUTABLE_FIELDS);
          return connections.update(
            actorOf(call, answerFor),
            id,
            {
              ...(mask.has("name") ? { name: validate.name(wanted.name, "connection.name") } : {}),
              ...(mask.has("scopes") ? { scopes: wanted.scopes } : {}),
            },
            validate.etag(wanted.etag, "connection.etag"),
          );
        },
      ),

    async batchCheckConnection(request) {
      const count = request.checks.length;
      if (count === 0 || count > MAX_BATCH_CHECKS) {
        throw invalidArgument("checks", `send 1 to ${MAX_BATCH_CHECKS} checks (got ${count})`);
      }
      const checks = request.checks.map((check, index) => checkRequest(check, `checks[${index}].`));
      return { results: (await connections.checkMany(checks)).map(checkResponse) };
    },
  };
}
