// kill -9 in the middle of idempotent writes: the answer of a write is saved in the write's own
// transaction, so after a restart every write retried with its request_id happens exactly once,
// and every write that was acknowledged before the kill answers the same again.

import { afterEach, describe, expect, it } from "vitest";
import { ConnectionEvent_Type } from "../../gen/connections/v1/connection_pb.js";
import type { CreateConnectionResponse } from "../../gen/connections/v1/connection_service_pb.js";
import {
  type ProvisionedDatabase,
  postgresAdminUrl,
  provisionPostgres,
  provisionSqliteFile,
} from "../support/databases.js";
import { DATABASE_POOL_SIZE, mapConcurrently } from "../support/fixtures.js";
import { type ServiceProcess, startServiceProcess } from "../support/process.js";
import { GrpcJsRpcClient, uniqueId } from "../support/service.js";

const WRITES = 150;

const databases = [
  { name: "sqlite (file)", provision: provisionSqliteFile, enabled: true },
  { name: "postgres", provision: provisionPostgres, enabled: postgresAdminUrl !== undefined },
];

describe.each(databases)("SIGKILL during idempotent writes [$name]", ({ provision, enabled }) => {
  let database: ProvisionedDatabase | undefined;
  let service: ServiceProcess | undefined;
  const clients: GrpcJsRpcClient[] = [];

  afterEach(async () => {
    for (const client of clients.splice(0)) await client.close();
    await service?.stop("SIGKILL");
    await database?.drop();
  });

  it.skipIf(!enabled)(
    "does every write once, and replays the acknowledged ones as answered",
    async () => {
      database = await provision();
      service = await startServiceProcess({ DATABASE_URL: database.url });
      const before = new GrpcJsRpcClient(`127.0.0.1:${service.port}`);
      clients.push(before);
      const provisioning = before.as({ caller: "provisioning" });
      const source = uniqueId("org_src");
      const destinations = Array.from({ length: WRITES }, () => uniqueId("org_dst"));
      await mapConcurrently([source, ...destinations], DATABASE_POOL_SIZE, (id) =>
        provisioning.createOrganization({ id, name: id }),
      );

      const requests = destinations.map((destination) => ({
        destinationOrganizationId: destination,
        scopes: ["account.read"],
        requestId: uniqueId("rid"),
      }));
      const acknowledged = new Map<string, CreateConnectionResponse>();
      const writer = before.as({ caller: "api-gateway", organizationId: source });
      const running = mapConcurrently(requests, DATABASE_POOL_SIZE, async (request) => {
        try {
          acknowledged.set(request.requestId, await writer.createConnection(request));
        } catch {
          // Cut by the kill: unknown whether it happened; the retry below finds out.
        }
      });
      // Kill once part of the writes were acknowledged, with more in flight.
      while (acknowledged.size < WRITES / 3) await new Promise((resolve) => setTimeout(resolve, 5));
      service.child.kill("SIGKILL");
      await running;
      expect(acknowledged.size).toBeLessThan(WRITES);

      service = await startServiceProcess({ DATABASE_URL: database.url });
      const after = new GrpcJsRpcClient(`127.0.0.1:${service.port}`);
      clients.push(after);
      const retrier = after.as({ caller: "api-gateway", organizationId: source });
      const answers = await mapConcurrently(requests, DATABASE_POOL_SIZE, (request) =>
        retrier.createConnection(request),
      );
      for (const [index, request] of requests.entries()) {
        const first = acknowledged.get(request.requestId);
        if (first !== undefined) expect(answers[index]).toEqual(first);
        expect(answers[index]?.connection?.destinationOrganizationId).toBe(request.destinationOrganizationId);
      }
      // Exactly one Connection per destination, each with one CREATED event.
      const ids = new Set(answers.map((answer) => answer.connection?.id));
      expect(ids.size).toBe(WRITES);
      const sampled = answers.filter((_, index) => index % 10 === 0);
      for (const answer of sampled) {
        const events = await retrier.listConnectionEvents({ connectionId: answer.connection?.id ?? "" });
        expect(events.events.map((event) => event.type)).toEqual([ConnectionEvent_Type.CREATED]);
      }
    },
    120_000,
  );
});
