// Run as a process of its own (under strace, by test/store/durability.test.ts): opens the SQLite
// store at argv[2] and makes argv[4] organization writes, one after the other ("sequential"; with
// 8 KB names, "large", so that the WAL is checkpointed several times) or all at once
// ("concurrent"); or registers 40 organizations, creates argv[4] Connections between them and
// activates them, 64 writes at a time ("connections"); then closes it. "none" only opens and
// closes: the baseline. Each acknowledged write made one after the other is marked in the trace by
// a write of argv[5] to /dev/null, after a first mark, "event loop <pid>", that names the event
// loop's thread (the process's main thread).

import { openSync, writeSync } from "node:fs";
import { Connections } from "../../src/app/connections.js";
import { openStore } from "../../src/store/open.js";

const [path, mode, count, acknowledgement = "acknowledged"] = process.argv.slice(2);
const store = await openStore({ databaseUrl: `sqlite:${path}` });
const name = (index: number) =>
  mode === "large" ? `Organization ${index} `.padEnd(8000, "x") : `Organization ${index}`;
const write = (index: number) =>
  store.createOrganization({ id: `org_${mode}_${index}`, name: name(index), createTime: new Date() });
const writes = mode === "none" ? 0 : Number(count);
if (mode === "sequential" || mode === "large") {
  const marks = openSync("/dev/null", "w");
  writeSync(marks, `event loop ${process.pid}`);
  for (let index = 0; index < writes; index++) {
    await write(index);
    writeSync(marks, acknowledgement);
  }
} else if (mode === "connections") {
  const organizations = Array.from({ length: 40 }, (_, index) => `org_pairs_${index}`);
  for (const id of organizations) await store.createOrganization({ id, name: id, createTime: new Date() });
  const connections = new Connections(store);
  const pair = (index: number) => ({
    source: organizations[index % 40] as string,
    destination: organizations[(index + 1 + Math.floor(index / 40)) % 40] as string,
  });
  const caller = (organizationId: string) => ({ organizationId, caller: "test", actor: "", requestId: "" });
  const ids: string[] = [];
  /** Calls `write` for every index, 64 at a time, as a busy service would. */
  const inFlight = async (write: (index: number) => Promise<void>) => {
    let next = 0;
    await Promise.all(
      Array.from({ length: 64 }, async () => {
        while (next < writes) await write(next++);
      }),
    );
  };
  await inFlight(async (index) => {
    const { source, destination } = pair(index);
    const input = {
      destinationOrganizationId: destination,
      scopes: ["account.read"],
      name: "Pair",
      requestId: `r${index}`,
    };
    ids[index] = (await connections.create(caller(source), input)).id;
  });
  await inFlight(async (index) => {
    await connections.transition(caller(pair(index).destination), ids[index] as string, "ACTIVATE", {
      etag: "",
      reason: "",
    });
  });
} else {
  await Promise.all(Array.from({ length: writes }, (_, index) => write(index)));
}
await store.close();
