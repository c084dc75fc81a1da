// The tables as Kysely sees them. Timestamps are written as ISO-8601 strings on both dialects
// (PostgreSQL parses them into timestamptz) and read back as a string (SQLite) or a Date (pg).

import type { ColumnType } from "kysely";

export type SqlDialect = "sqlite" | "postgres";

type Timestamp = ColumnType<Date | string, string, string>;
/** Assigned by the database; pg returns bigint as a string. */
type Seq = ColumnType<number | string, never, never>;

export interface OrganizationsTable {
  id: string;
  name: string;
  create_time: Timestamp;
}

export interface ConnectionsTable {
  seq: Seq;
  id: string;
  source_organization_id: string;
  destination_organization_id: string;
  name: string;
  /** JSON array of the sorted scopes. */
  scopes: string;
  state: string;
  create_time: Timestamp;
  update_time: Timestamp;
  activate_time: Timestamp | null;
  deactivate_time: Timestamp | null;
  creator: string;
  create_request_id: string;
  version: number;
}

export interface ConnectionEventsTable {
  seq: Seq;
  id: string;
  connection_id: string;
  type: string;
  from_state: string | null;
  to_state: string;
  actor_organization_id: string;
  caller: string;
  actor: string;
  reason: string;
  request_id: string;
  create_time: Timestamp;
  source_organization_id: string;
  destination_organization_id: string;
  /** JSON array of the Connection's sorted scopes after the event. */
  scopes: string;
  /** JSON array of the scopes before it: set for UPDATED, "[]" otherwise. */
  previous_scopes: string;
  /** The change feed's commit order (migration 0003); assigned by the database. */
  feed_position: Seq;
}

/** The first answer to each idempotent write (migration 0004): replayed to retries of its request_id. */
export interface IdempotencyRecordsTable {
  /** Whose key it is: "organization:<id>" or "caller:<name>". */
  scope: string;
  request_id: string;
  /** The RPC's name, e.g. "ActivateConnection". */
  method: string;
  /** A digest of the request's parameters (request_id aside). */
  fingerprint: string;
  /** The response message, protobuf binary in base64; null when the call failed. */
  response: string | null;
  /** The final error as JSON ({reason, message, metadata}); null when the call succeeded. */
  error: string | null;
  create_time: Timestamp;
}

/** One row: the identity of this database's change feed. */
export interface FeedTable {
  id: string;
}

export interface Database {
  organizations: OrganizationsTable;
  connections: ConnectionsTable;
  connection_events: ConnectionEventsTable;
  feed: FeedTable;
  idempotency_records: IdempotencyRecordsTable;
}
