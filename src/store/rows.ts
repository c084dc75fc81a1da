// Rows as the two dialects return them, and the records of store.ts they become: the column
// lists every query selects, the conversions both ways (SQLite returns ISO strings, pg Dates and
// bigint strings), and the keyset cursors handed out in pages.

import type { Compilable, CompiledQuery, Insertable, Selectable } from "kysely";
import type { EventType, State } from "../domain/connection.js";
import type { ConnectionEventsTable, ConnectionsTable, IdempotencyRecordsTable } from "./schema.js";
import {
  type ConnectionRecord,
  type EventRecord,
  type IdempotencyRecord,
  InvalidCursorError,
  type Page,
} from "./store.js";

/** The columns of a Connection's record: what a write gives its row and toConnection reads; `seq` is the database's. */
export const CONNECTION_RECORD_COLUMNS = [
  "id",
  "source_organization_id",
  "destination_organization_id",
  "name",
  "scopes",
  "state",
  "create_time",
  "update_time",
  "activate_time",
  "deactivate_time",
  "creator",
  "create_request_id",
  "version",
] as const;

/** What queries of Connections select: the record and `seq`, for cursors. */
export const CONNECTION_COLUMNS = ["seq", ...CONNECTION_RECORD_COLUMNS] as const;

/** The columns a write gives an event's row (toEventRow). */
export const EVENT_WRITE_COLUMNS = [
  "id",
  "connection_id",
  "type",
  "from_state",
  "to_state",
  "actor_organization_id",
  "caller",
  "actor",
  "reason",
  "request_id",
  "create_time",
  "source_organization_id",
  "destination_organization_id",
  "scopes",
  "previous_scopes",
] as const;

export const EVENT_COLUMNS = ["seq", ...EVENT_WRITE_COLUMNS] as const;

/** The columns of an idempotency record's row (toIdempotencyRow). */
export const IDEMPOTENCY_COLUMNS = [
  "scope",
  "request_id",
  "method",
  "fingerprint",
  "response",
  "error",
  "create_time",
] as const;

export type ConnectionRow = Pick<Selectable<ConnectionsTable>, (typeof CONNECTION_COLUMNS)[number]>;
export type ConnectionRecordRow = Pick<Selectable<ConnectionsTable>, (typeof CONNECTION_RECORD_COLUMNS)[number]>;
export type EventRow = Pick<Selectable<ConnectionEventsTable>, (typeof EVENT_COLUMNS)[number]>;

export function withParameters<R>(query: CompiledQuery<R>, parameters: readonly unknown[]): CompiledQuery<R> {
  return { ...query, parameters };
}

/**
 * A query built and compiled once, with a marker in place of each value, so that a run only puts
 * its values in (a CPU profile of a write showed Kysely's query building per statement). The
 * markers tell which value goes to which parameter, whatever order the compiled SQL has them in.
 */
export function preparedQuery<K extends string, R>(
  keys: readonly K[],
  build: (markers: Readonly<Record<K, never>>) => Compilable<R>,
): (values: Readonly<Partial<Record<K, unknown>>>) => CompiledQuery<R> {
  const prepared = preparedStatement({ row: keys }, (markers) => build(markers.row));
  return (values) => prepared({ row: values });
}

type RowKeys = Readonly<Record<string, readonly string[]>>;

/** preparedQuery for a statement that writes several rows (e.g. one per CTE): each row's values under its name. */
export function preparedStatement<G extends RowKeys, R>(
  rows: G,
  build: (markers: { readonly [N in keyof G]: Readonly<Record<G[N][number], never>> }) => Compilable<R>,
): (values: { readonly [N in keyof G]?: Readonly<Partial<Record<G[N][number], unknown>>> }) => CompiledQuery<R> {
  const marker = (row: string, key: string) => `\u0000${row}\u0000${key}`;
  const markers = Object.fromEntries(
    Object.entries(rows).map(([row, keys]) => [row, Object.fromEntries(keys.map((key) => [key, marker(row, key)]))]),
  );
  const compiled = build(markers as Parameters<typeof build>[0]).compile();
  const order = compiled.parameters.map((parameter) => {
    for (const [row, keys] of Object.entries(rows)) {
      const key = keys.find((candidate) => marker(row, candidate) === parameter);
      if (key !== undefined) return [row, key] as const;
    }
    throw new Error(`a prepared query has a value that is not a marker: ${String(parameter)}`);
  });
  return (values) => ({
    ...compiled,
    parameters: order.map(([row, key]) => (values[row] as Readonly<Record<string, unknown>> | undefined)?.[key]),
  });
}

export function parseCursor(cursor: string): number {
  const seq = Number(cursor);
  if (!/^\d{1,15}$/.test(cursor) || !Number.isSafeInteger(seq)) throw new InvalidCursorError();
  return seq;
}

/** A Connection's keyset position: its create_time (ISO-8601, as stored) and seq. */
export function connectionCursor(row: ConnectionRow): string {
  return `${toDate(row.create_time).toISOString()}/${row.seq}`;
}

export function parseConnectionCursor(cursor: string): { createTime: string; seq: number } {
  const match = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\/(\d{1,15})$/.exec(cursor);
  const createTime = match?.[1];
  if (createTime === undefined || Number.isNaN(Date.parse(createTime))) throw new InvalidCursorError();
  return { createTime, seq: parseCursor(match?.[2] ?? "") };
}

export function toPage<R, T>(rows: R[], limit: number, convert: (row: R) => T, cursorOf: (row: R) => string): Page<T> {
  const more = rows.length > limit;
  const kept = more ? rows.slice(0, limit) : rows;
  const last = kept.at(-1);
  return { items: kept.map(convert), nextCursor: more && last !== undefined ? cursorOf(last) : undefined };
}

/** SQLite returns the ISO string that was written, pg a Date. */
export function toDate(value: Date | string): Date {
  return value instanceof Date ? value : new Date(value);
}

export function toOptionalDate(value: Date | string | null): Date | undefined {
  return value === null ? undefined : toDate(value);
}

export function toConnectionRow(connection: ConnectionRecord): Insertable<ConnectionsTable> {
  return {
    id: connection.id,
    source_organization_id: connection.sourceOrganizationId,
    destination_organization_id: connection.destinationOrganizationId,
    name: connection.name,
    scopes: JSON.stringify(connection.scopes),
    state: connection.state,
    create_time: connection.createTime.toISOString(),
    update_time: connection.updateTime.toISOString(),
    activate_time: connection.activateTime?.toISOString() ?? null,
    deactivate_time: connection.deactivateTime?.toISOString() ?? null,
    creator: connection.creator,
    create_request_id: connection.createRequestId,
    version: connection.version,
  };
}

export function toConnection(row: ConnectionRecordRow): ConnectionRecord {
  return {
    id: row.id,
    sourceOrganizationId: row.source_organization_id,
    destinationOrganizationId: row.destination_organization_id,
    name: row.name,
    scopes: JSON.parse(row.scopes) as string[],
    state: row.state as State,
    createTime: toDate(row.create_time),
    updateTime: toDate(row.update_time),
    activateTime: toOptionalDate(row.activate_time),
    deactivateTime: toOptionalDate(row.deactivate_time),
    creator: row.creator,
    createRequestId: row.create_request_id,
    version: row.version,
  };
}

export function toEventRow(event: EventRecord): Insertable<ConnectionEventsTable> {
  return {
    id: event.id,
    connection_id: event.connectionId,
    type: event.type,
    from_state: event.fromState ?? null,
    to_state: event.toState,
    actor_organization_id: event.actorOrganizationId,
    caller: event.caller,
    actor: event.actor,
    reason: event.reason,
    request_id: event.requestId,
    create_time: event.createTime.toISOString(),
    source_organization_id: event.sourceOrganizationId,
    destination_organization_id: event.destinationOrganizationId,
    scopes: JSON.stringify(event.scopes),
    previous_scopes: JSON.stringify(event.previousScopes),
  };
}

export function toEvent(row: EventRow): EventRecord {
  return {
    id: row.id,
    connectionId: row.connection_id,
    type: row.type as EventType,
    fromState: (row.from_state ?? undefined) as State | undefined,
    toState: row.to_state as State,
    actorOrganizationId: row.actor_organization_id,
    caller: row.caller,
    actor: row.actor,
    reason: row.reason,
    requestId: row.request_id,
    createTime: toDate(row.create_time),
    sourceOrganizationId: row.source_organization_id,
    destinationOrganizationId: row.destination_organization_id,
    scopes: JSON.parse(row.scopes) as string[],
    previousScopes: JSON.parse(row.previous_scopes) as string[],
  };
}

export function toIdempotencyRow(record: IdempotencyRecord): Insertable<IdempotencyRecordsTable> {
  const { outcome } = record;
  return {
    scope: record.scope,
    request_id: record.requestId,
    method: record.method,
    fingerprint: record.fingerprint,
    response: "response" in outcome ? Buffer.from(outcome.response).toString("base64") : null,
    error: "error" in outcome ? JSON.stringify(outcome.error) : null,
    create_time: record.createTime.toISOString(),
  };
}

export function toIdempotencyRecord(row: Selectable<IdempotencyRecordsTable>): IdempotencyRecord {
  return {
    scope: row.scope,
    requestId: row.request_id,
    method: row.method,
    fingerprint: row.fingerprint,
    outcome:
      row.response !== null
        ? { response: new Uint8Array(Buffer.from(row.response, "base64")) }
        : { error: JSON.parse(row.error ?? "{}") },
    createTime: toDate(row.create_time),
  };
}
