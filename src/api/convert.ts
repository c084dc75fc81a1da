// Records to wire messages. The domain's names equal the proto enum names without their prefix,
// so the generated enums' own name-to-number maps do the translation.

import { type MessageInitShape, protoInt64 } from "@bufbuild/protobuf";
import { type Timestamp, TimestampSchema, timestampFromDate } from "@bufbuild/protobuf/wkt";
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
 * A new message per call, written out rather than made by create(ConnectionSchema, ...), which
 * walks the fields by reflection. Nothing is kept between calls: keeping messages by id helped a
 * hot id a little, but with many distinct ids each kept message lived just long enough to reach
 * V8's old generation, and the answers cost several times more (docs/performance.md). The type
 * names every field, so a field added to the proto does not compile until it is set here.
 */
export function connectionToProto(connection: ConnectionRecord): Connection {
  return {
    $typeName: ConnectionSchema.typeName,
    id: connection.id,
    sourceOrganizationId: connection.sourceOrganizationId,
    destinationOrganizationId: connection.destinationOrganizationId,
    name: connection.name,
    scopes: [...connection.scopes],
    state: stateToProto(connection.state),
    createTime: timestampOf(connection.createTime),
    updateTime: timestampOf(connection.updateTime),
    activateTime: connection.activateTime && timestampOf(connection.activateTime),
    deactivateTime: connection.deactivateTime && timestampOf(connection.deactivateTime),
    creator: connection.creator,
    etag: etagOf(connection),
  };
}

/** What timestampFromDate gives, without create()'s reflection. */
function timestampOf(date: Date): Timestamp {
  const ms = date.getTime();
  const seconds = Math.floor(ms / 1000);
  return {
    $typeName: TimestampSchema.typeName,
    seconds: protoInt64.parse(seconds),
    nanos: (ms - seconds * 1000) * 1_000_000,
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
