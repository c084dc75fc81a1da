// GetConnection reads a Connection as a check does: every acknowledged write seen at once, and on
// SQLite without queueing behind other reads of the one connection (a storm's reads of the
// database would otherwise hold a dashboard's GetConnection for as long as they take).

import { expect, it } from "vitest";
import { type Actor, Connections } from "../../src/app/connections.js";
import { uniqueId } from "../store/fixtures.js";
import { describeEachDatabase, useTestStore } from "../support/databases.js";

const actor = (organizationId: string, caller = "api-gateway"): Actor => ({
  organizationId,
  caller,
  actor: "",
  requestId: "",
});

describeEachDatabase("GetConnection's read", (database) => {
  const testStore = useTestStore(database);

  /** Two new organizations, and a Connection from the first to the second. */
  async function connected(name: string) {
    const store = testStore();
    const [source, destination] = [uniqueId("org"), uniqueId("org")];
    for (const id of [source, destination]) await store.createOrganization({ id, name: id, createTime: new Date() });
    const connections = new Connections(store);
    const created = await connections.create(actor(source), {
      destinationOrganizationId: destination,
      scopes: ["account.read"],
      name,
      requestId: "",
    });
    return { connections, source, destination, created };
  }

  it("sees each acknowledged write at once, from either side, and hides the Connection from others", async () => {
    const { connections, source, destination, created } = await connected("Reads");
    expect(await connections.get(destination, created.id)).toEqual(created);
    const active = await connections.transition(actor(destination, "dashboard-bff"), created.id, "ACTIVATE", {
      etag: "",
      reason: "",
    });
    expect((await connections.get(source, created.id)).state).toBe("ACTIVE");
    expect(await connections.get(source, created.id)).toEqual(active);
    const inactive = await connections.transition(actor(source), created.id, "DEACTIVATE", { etag: "", reason: "" });
    expect(await connections.get(destination, created.id)).toEqual(inactive);
    await expect(connections.get(uniqueId("org"), created.id)).rejects.toMatchObject({
      reason: "CONNECTION_NOT_FOUND",
    });
    await expect(connections.get(source, uniqueId("cxn"))).rejects.toMatchObject({ reason: "CONNECTION_NOT_FOUND" });
  });

  it.runIf(database.dialect === "sqlite")(
    "answers a known Connection before reads of the database queued ahead of it",
    async () => {
      const { connections, source, destination, created } = await connected("Queued");
      const store = testStore();
      const settled: string[] = [];
      // Each a query on SQLite's one connection, taken in turn, several turns of the event loop in all.
      const queued = Array.from({ length: 400 }, (_, index) =>
        store.getOrganization(source).then(() => void settled.push(`read ${index}`)),
      );
      const got = connections.get(destination, created.id).then((connection) => {
        settled.push("GetConnection");
        return connection;
      });
      await Promise.all([...queued, got]);
      expect(await got).toEqual(created);
      expect(settled.indexOf("GetConnection")).toBeLessThan(200);
    },
  );
});
