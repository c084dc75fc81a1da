// Fixtures for the end-to-end suites, made through the public API only (no database access), so
// they work the same against every database and through every client.

import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { expect } from "vitest";
import { type Connection, Connection_State } from "../../gen/connections/v1/connection_pb.js";
import { loadConfig } from "../../src/config/config.js";
import { type RpcClient, registerOrganizations } from "./service.js";

export type StateName = "PENDING" | "ACTIVE" | "INACTIVE";

export interface ConnectionFixture {
  readonly source: string;
  readonly destination: string;
  readonly connection: Connection;
}

/** The connection out of a response, failing the test when it is missing. */
export function present<T>(value: T | undefined, what = "connection"): T {
  if (value === undefined) throw new Error(`the response has no ${what}`);
  return value;
}

/** Milliseconds since the epoch of a Timestamp that must be set. */
export function ms(timestamp: Timestamp | undefined): number {
  expect(timestamp, "timestamp is set").toBeDefined();
  return timestampMs(timestamp as Timestamp);
}

/**
 * Creates a Connection from `source` to `destination` through the dashboard BFF and brings it to
 * `state` (PENDING as created; ACTIVE activated by the destination; INACTIVE deactivated by the
 * source).
 */
export async function connect(
  client: RpcClient,
  source: string,
  destination: string,
  options: { readonly state?: StateName; readonly scopes?: readonly string[]; readonly name?: string } = {},
): Promise<Connection> {
  const { connection } = await client.as({ caller: "dashboard-bff", organizationId: source }).createConnection({
    destinationOrganizationId: destination,
    scopes: [...(options.scopes ?? ["account.read", "transaction.read"])],
    name: options.name ?? `${source} to ${destination}`,
  });
  let current = present(connection);
  if (options.state === "ACTIVE") {
    const activated = await client
      .as({ caller: "dashboard-bff", organizationId: destination })
      .activateConnection({ id: current.id });
    current = present(activated.connection);
  } else if (options.state === "INACTIVE") {
    const deactivated = await client
      .as({ caller: "dashboard-bff", organizationId: source })
      .deactivateConnection({ id: current.id });
    current = present(deactivated.connection);
  }
  expect(current.state).toBe(Connection_State[options.state ?? "PENDING"]);
  return current;
}

/** Two new organizations and a Connection between them in `state`. */
export async function connectionFixture(
  client: RpcClient,
  options: { readonly state?: StateName; readonly scopes?: readonly string[] } = {},
): Promise<ConnectionFixture> {
  const [source = "", destination = ""] = await registerOrganizations(client, 2);
  return { source, destination, connection: await connect(client, source, destination, options) };
}

/** The Connection as its source sees it now. */
export async function reread(client: RpcClient, fixture: ConnectionFixture): Promise<Connection> {
  const { connection } = await client
    .as({ caller: "dashboard-bff", organizationId: fixture.source })
    .getConnection({ id: fixture.connection.id });
  return present(connection);
}

/** The number of events recorded for the Connection. */
export async function eventCount(client: RpcClient, fixture: ConnectionFixture): Promise<number> {
  const { events, nextPageToken } = await client
    .as({ caller: "dashboard-bff", organizationId: fixture.source })
    .listConnectionEvents({ connectionId: fixture.connection.id, pageSize: 500 });
  expect(nextPageToken).toBe("");
  return events.length;
}

/** The PostgreSQL pool each service in the suites runs with (DATABASE_POOL_SIZE's default). */
export const DATABASE_POOL_SIZE = loadConfig({}).databasePoolSize;

/**
 * `work` over every item with at most `limit` in flight, results in the items' order. Concurrent
 * writes beyond the service's database pool would wait for a connection, and on a loaded machine
 * past the pool's wait: keep "at once" within the pool.
 */
export async function mapConcurrently<T, R>(
  items: readonly T[],
  limit: number,
  work: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await work(items[index] as T, index);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}
