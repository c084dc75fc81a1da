// Run as a process of its own (under strace, by test/store/durability.test.ts): opens the SQLite
// store at argv[2] and makes argv[4] organization writes, one after the other ("sequential"; with
// 8 KB names, "large", so that the WAL is checkpointed several times) or all at once
// ("concurrent"), then closes it. "none" only opens and closes: the baseline. Each acknowledged
// write made one after the other is marked in the trace by a write of argv[5] to /dev/null, after
// a first mark, "event loop <pid>", that names the event loop's thread (the process's main thread).

import { openSync, writeSync } from "node:fs";
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
} else {
  await Promise.all(Array.from({ length: writes }, (_, index) => write(index)));
}
await store.close();
