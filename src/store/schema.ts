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

/** One row: the identity of this database's change feed. */
export interface FeedTable {
  id: string;
}

export interface Database {
  organizations: OrganizationsTable;
  connections: ConnectionsTable;
  connection_events: ConnectionEventsTable;
  feed: FeedTable;
}
