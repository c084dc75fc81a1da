// The service's log writes each line when it is logged: a process killed with SIGKILL right after
// logging has lost none of its lines (asynchronous writes kept all but the first in memory).

import { spawnSync } from "node:child_process";
import { expect, it } from "vitest";

const ROOT = new URL("../..", import.meta.url).pathname;

it("keeps every line logged before a SIGKILL", () => {
  const script = [
    'import { createLogger } from "./src/observability/log.ts";',
    'const logger = createLogger("info");',
    'for (let line = 0; line < 100; line++) logger.info({ line }, "rpc");',
    'process.kill(process.pid, "SIGKILL");',
  ].join("\n");
  const child = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
    cwd: ROOT,
    encoding: "utf8",
  });
  expect(child.signal).toBe("SIGKILL");
  const lines = child.stdout
    .split("\n")
    .filter((text) => text !== "")
    .map((text) => (JSON.parse(text) as { line: number }).line);
  expect(lines).toEqual(Array.from({ length: 100 }, (_, line) => line));
});
