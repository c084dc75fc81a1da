// Records to wire messages. The domain's names equal the proto enum names without their prefix,
// so the generated enums' own name-to-number maps do the translation.

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  type Connection,
  Connection_State,
  ConnectionEvent_Type,
  type ConnectionEventSchema,
  ConnectionSchema,
} from "../../gen/connections/v1/connection_pb.js";
import type { OrganizationSchema } from "../../gen/connections/v1/organization_service_pb.js";
import { etagOf } from "../app/connections.js";
import type { State } from "../domain/connection.js";
import type { ConnectionRecord, EventRecord, OrganizationRecord } from "../store/store.js";

export function stateToProto(state: State): Connection_State {
  return Connection_State[state];
}

/**
 * A Connection's content is fixed by its id and version (every write makes a new version), so the
 * message made for one is kept and shared by every answer after (the check path answers with the
 * same Connections again and again; check-encoding.ts also keeps each message's encoding). Keyed by
 * id, not by record object: the check cache hands out a new record object on every read. Bounded:
 * the oldest entries go first. Nothing may modify a message handed out here.
 */
const MESSAGES_KEPT = 20_000;
const messages = new Map<string, { readonly version: number; readonly message: Connection }>();

export function connectionToProto(connection: ConnectionRecord): Connection {
  const kept = messages.get(connection.id);
  if (kept !== undefined && kept.version === connection.version) return kept.message;
  const message = create(ConnectionSchema, connectionInit(connection));
  messages.delete(connection.id);
  if (messages.size >= MESSAGES_KEPT) messages.delete(messages.keys().next().value as string);
  messages.set(connection.id, { version: connection.version, message });
  return message;
}

function connectionInit(connection: ConnectionRecord): MessageInitShape<typeof ConnectionSchema> {
  return {
    id: connection.id,
    sourceOrganizationId: connection.sourceOrganizationId,
    destinationOrganizationId: connection.destinationOrganizationId,
    name: connection.name,
    scopes: [...connection.scopes],
    state: stateToProto(connection.state),
    createTime: timestampFromDate(connection.createTime),
    updateTime: timestampFromDate(connection.updateTime),
    activateTime: connection.activateTime && timestampFromDate(connection.activateTime),
    deactivateTime: connection.deactivateTime && timestampFromDate(connection.deactivateTime),
    creator: connection.creator,
    etag: etagOf(connection),
  };
}

export function eventToProto(event: EventRecord): MessageInitShape<typeof ConnectionEventSchema> {
  return {
    id: event.id,
    connectionId: event.connectionId,
    type: ConnectionEvent_Type[event.type],
    fromState: event.fromState === undefined ? Connection_State.UNSPECIFIED : stateToProto(event.fromState),
    toState: stateToProto(event.toState),
    actorOrganizationId: event.actorOrganizationId,
    caller: event.caller,
    actor: event.actor,
    reason: event.reason,
    requestId: event.requestId,
    createTime: timestampFromDate(event.createTime),
    sourceOrganizationId: event.sourceOrganizationId,
    destinationOrganizationId: event.destinationOrganizationId,
    scopes: [...event.scopes],
    previousScopes: [...event.previousScopes],
  };
}

export function organizationToProto(organization: OrganizationRecord): MessageInitShape<typeof OrganizationSchema> {
  return { id: organization.id, name: organization.name, createTime: timestampFromDate(organization.createTime) };
}
