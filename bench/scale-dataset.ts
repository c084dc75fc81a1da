// A large SQLite data set for the scale benchmark, written by SQLite itself from one generated SQL
// script (recursive CTEs) rather than through the API: a million Connections take about a minute
// this way, against hours at the API's write rate. The file gets the service's schema from its
// own migrations first (openStore), so it is exactly what the service would have written, in
// shape: Connection i links org_scale_(i mod O) to another organization, is ACTIVE (8 in 10),
// PENDING or INACTIVE, and has one event per version (CREATED, then ACTIVATED, then DEACTIVATED).
// Run alone: `npx tsx bench/scale-dataset.ts FILE CONNECTIONS` (organizations: a fiftieth).

import SqliteDatabase from "better-sqlite3";
import { openStore } from "../src/store/open.js";
import type { Dataset, SeededConnection } from "./seed.js";

export interface ScaleDatasetOptions {
  readonly connections: number;
  readonly organizations: number;
}

/** Unix seconds of the first Connection's create_time; each next one is a second later. */
const EPOCH_SECONDS = 1_767_225_600;
const SCOPE_SETS = ['["account.read"]', '["account.read","transaction.read"]', '["inquiry.read","verification.read"]'];

export const scaleConnectionId = (index: number) => `cxn_scale_${String(index).padStart(9, "0")}`;
export const scaleOrganizationId = (index: number) => `org_scale_${String(index).padStart(6, "0")}`;

/** What Connection `index` is, computed the same way as the SQL below does. */
export function scaleConnection(index: number, organizations: number): SeededConnection {
  const source = index % organizations;
  const roll = index % 10;
  return {
    id: scaleConnectionId(index),
    source: scaleOrganizationId(source),
    destination: scaleOrganizationId((source + 1 + Math.floor(index / organizations)) % organizations),
    state: roll < 8 ? "ACTIVE" : roll === 8 ? "PENDING" : "INACTIVE",
    scopes: JSON.parse(SCOPE_SETS[index % SCOPE_SETS.length] as string) as string[],
  };
}

/** The data set as the check pools need it: Connections `from` .. `to - 1` only. */
export function scaleDataset(options: ScaleDatasetOptions, from = 0, to = options.connections): Dataset {
  const connections = Array.from({ length: to - from }, (_, offset) =>
    scaleConnection(from + offset, options.organizations),
  );
  return {
    organizations: Array.from({ length: options.organizations }, (_, index) => scaleOrganizationId(index)),
    bigOrganizationId: "",
    connections,
    pairs: new Set(),
  };
}

export async function buildScaleDatabase(path: string, options: ScaleDatasetOptions): Promise<void> {
  const { connections, organizations } = options;
  if (connections > organizations * (organizations - 1)) throw new Error("too few organizations for the pairs");
  // The schema, from the service's own migrations.
  await (await openStore({ databaseUrl: `sqlite:${path}` })).close();
  const database = new SqliteDatabase(path);
  try {
    // Written once and thrown away on failure: no journal needed while building.
    database.pragma("journal_mode = OFF");
    database.pragma("synchronous = OFF");
    database.exec(`
      begin;
      insert into organizations (id, name, create_time)
        with recursive n(i) as (select 0 union all select i + 1 from n where i < ${organizations - 1})
        select printf('org_scale_%06d', i), printf('Organization %d', i), '2025-12-01T00:00:00.000Z' from n;
      insert into connections (id, source_organization_id, destination_organization_id, name, scopes, state,
          create_time, update_time, activate_time, deactivate_time, creator, create_request_id, version)
        with recursive n(i) as (select 0 union all select i + 1 from n where i < ${connections - 1}),
        c(i, source, roll, created) as (
          select i, i % ${organizations}, i % 10,
            strftime('%Y-%m-%dT%H:%M:%fZ', ${EPOCH_SECONDS} + i, 'unixepoch') from n)
        select printf('cxn_scale_%09d', i),
          printf('org_scale_%06d', source),
          printf('org_scale_%06d', (source + 1 + i / ${organizations}) % ${organizations}),
          printf('Scale connection %d', i),
          case i % 3 when 0 then '${SCOPE_SETS[0]}' when 1 then '${SCOPE_SETS[1]}' else '${SCOPE_SETS[2]}' end,
          case when roll < 8 then 'ACTIVE' when roll = 8 then 'PENDING' else 'INACTIVE' end,
          created, created,
          case when roll = 8 then null else created end,
          case when roll = 9 then created end,
          'user:usr_scale', printf('req-scale-%d', i),
          case when roll < 8 then 2 when roll = 8 then 1 else 3 end
        from c;
      insert into connection_events (id, connection_id, type, from_state, to_state, actor_organization_id, caller,
          actor, reason, request_id, create_time, source_organization_id, destination_organization_id, scopes,
          previous_scopes)
        select printf('evt_scale_%09d_%d', c.seq, v.version), c.id,
          case v.version when 1 then 'CREATED' when 2 then 'ACTIVATED' else 'DEACTIVATED' end,
          case v.version when 1 then null when 2 then 'PENDING' else 'ACTIVE' end,
          case v.version when 1 then 'PENDING' when 2 then 'ACTIVE' else 'INACTIVE' end,
          c.source_organization_id, 'api-gateway', 'user:usr_scale',
          case v.version when 3 then 'no longer needed' else '' end,
          printf('req-scale-evt-%d-%d', c.seq, v.version), c.create_time,
          c.source_organization_id, c.destination_organization_id, c.scopes, '[]'
        from connections c join (select 1 as version union all select 2 union all select 3) v
          on v.version <= c.version
        order by c.seq, v.version;
      commit;
    `);
  } finally {
    database.close();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [path, count] = process.argv.slice(2);
  if (path === undefined || count === undefined) throw new Error("usage: scale-dataset.ts FILE CONNECTIONS");
  const connections = Number(count);
  const started = performance.now();
  await buildScaleDatabase(path, { connections, organizations: Math.max(100, Math.ceil(connections / 50)) });
  process.stdout.write(
    `${path}: ${connections} connections in ${((performance.now() - started) / 1000).toFixed(1)} s\n`,
  );
}
