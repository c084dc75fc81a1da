// Records for storage tests, shaped as the application layer would make them.

import { randomBytes } from "node:crypto";
import type { EventType, State } from "../../src/domain/connection.js";
import type { ConnectionRecord, EventRecord, IdempotencyRecord, Store } from "../../src/store/store.js";

export function uniqueId(prefix: string): string {
  return `${prefix}_${randomBytes(8).toString("hex")}`;
}

export async function newOrganization(store: Store): Promise<string> {
  const id = uniqueId("org");
  await store.createOrganization({ id, name: `Organization ${id}`, createTime: new Date() });
  return id;
}

export function connectionRecord(
  sourceOrganizationId: string,
  destinationOrganizationId: string,
  overrides: Partial<ConnectionRecord> = {},
): ConnectionRecord {
  const now = new Date();
  return {
    id: uniqueId("cxn"),
    sourceOrganizationId,
    destinationOrganizationId,
    name: "Sharing",
    scopes: ["account.read", "inquiry.read"],
    state: "PENDING",
    createTime: now,
    updateTime: now,
    activateTime: undefined,
    deactivateTime: undefined,
    creator: "user:usr_1",
    createRequestId: "",
    version: 1,
    ...overrides,
  };
}

export function eventFor(connection: ConnectionRecord, type: EventType, fromState: State | undefined): EventRecord {
  return {
    id: uniqueId("evt"),
    connectionId: connection.id,
    type,
    fromState,
    toState: connection.state,
    sourceOrganizationId: connection.sourceOrganizationId,
    destinationOrganizationId: connection.destinationOrganizationId,
    scopes: connection.scopes,
    previousScopes: [],
    actorOrganizationId: connection.sourceOrganizationId,
    caller: "dashboard-bff",
    actor: "user:usr_1",
    reason: type === "DEACTIVATED" ? "no longer needed" : "",
    requestId: uniqueId("req"),
    createTime: connection.updateTime,
  };
}

export function createdEvent(connection: ConnectionRecord): EventRecord {
  return eventFor(connection, "CREATED", undefined);
}

const EVENT_OF: Readonly<Record<State, EventType>> = {
  ACTIVE: "ACTIVATED",
  INACTIVE: "DEACTIVATED",
  PENDING: "REACTIVATED",
};

/** The next version of `connection` in state `to`, and the event that records it. */
export function transition(
  connection: ConnectionRecord,
  to: State,
  at: Date = new Date(connection.updateTime.getTime() + 1),
): { next: ConnectionRecord; event: EventRecord } {
  const next: ConnectionRecord = {
    ...connection,
    state: to,
    updateTime: at,
    activateTime: to === "ACTIVE" ? at : connection.activateTime,
    deactivateTime: to === "INACTIVE" ? at : connection.deactivateTime,
    version: connection.version + 1,
  };
  return { next, event: eventFor(next, EVENT_OF[to], connection.state) };
}

/** An idempotency record answering with `response` bytes (or the given outcome). */
export function answerRecord(overrides: Partial<IdempotencyRecord> = {}): IdempotencyRecord {
  return {
    scope: `organization:${uniqueId("org")}`,
    requestId: uniqueId("rid"),
    method: "CreateConnection",
    fingerprint: randomBytes(16).toString("base64url"),
    outcome: { response: new Uint8Array(randomBytes(40)) },
    createTime: new Date(),
    ...overrides,
  };
}
