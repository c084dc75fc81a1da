// Run as a process of its own (under strace, by test/store/durability.test.ts): opens the SQLite
// store at argv[2] and makes argv[4] organization writes, one after the other ("sequential") or
// all at once ("concurrent"), then closes it. "none" only opens and closes: the baseline.

import { openStore } from "../../src/store/open.js";

const [path, mode, count] = process.argv.slice(2);
const store = await openStore({ databaseUrl: `sqlite:${path}` });
const write = (index: number) =>
  store.createOrganization({ id: `org_${mode}_${index}`, name: `Organization ${index}`, createTime: new Date() });
const writes = mode === "none" ? 0 : Number(count);
if (mode === "sequential") {
  for (let index = 0; index < writes; index++) await write(index);
} else {
  await Promise.all(Array.from({ length: writes }, (_, index) => write(index)));
}
await store.close();
