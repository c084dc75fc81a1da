// The token service's change-feed follower as a process, the cursor kept in a file:
//   ADDR=http://127.0.0.1:8080 TOKEN=dev-token-service CURSOR_FILE=feed.cursor node follow.js
// Prints one line per revocation on stdout ("revoke share tokens for connection cxn_... (scopes
// ...)"), where the real service would revoke them; progress on stderr. SIGINT or SIGTERM stops it
// (exit 0); an error that resuming would not fix exits 2, and the next start resumes from the file.

import { readFile, rename, writeFile } from "node:fs/promises";
import { ConnectError } from "@connectrpc/connect";
import { ConnectionEvent_Type } from "../../gen/connections/v1/connection_pb.js";
import { type CursorStore, followChangeFeed } from "./feed.js";

/** The cursor in a file, replaced whole (write, then rename) so a crash never leaves half of one. */
function cursorFile(path: string): CursorStore {
  return {
    async load() {
      try {
        return (await readFile(path, "utf8")).trim() || undefined;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
        throw error;
      }
    },
    async save(cursor) {
      await writeFile(`${path}.tmp`, cursor);
      await rename(`${path}.tmp`, path);
    },
  };
}

const stop = new AbortController();
for (const signal of ["SIGINT", "SIGTERM"] as const) process.once(signal, () => stop.abort());
const log = (line: string) => process.stderr.write(`${line}\n`);

try {
  await followChangeFeed({
    baseUrl: process.env.ADDR ?? "http://127.0.0.1:8080",
    token: process.env.TOKEN ?? "dev-token-service",
    cursors: cursorFile(process.env.CURSOR_FILE ?? "feed.cursor"),
    signal: stop.signal,
    maxBackoffMs: Number(process.env.MAX_BACKOFF_MS ?? 5_000),
    async revoke({ connectionId, scopes, event }) {
      const cause = `TYPE_${ConnectionEvent_Type[event.type]} ${event.id}`;
      process.stdout.write(
        `revoke share tokens for connection ${connectionId} (scopes ${scopes.join(", ")}) after ${cause}\n`,
      );
    },
    onStream: (startAfter) =>
      log(`following the change feed ${startAfter === "" ? "from now" : `after ${startAfter}`}`),
    onResume: (error, startAfter, backoffMs) =>
      log(`stream ended: ${error.message}; resuming after ${startAfter || "now"} in ${backoffMs} ms`),
  });
  log("stopped");
} catch (error) {
  log(`following failed: ${ConnectError.from(error).message}`);
  process.exitCode = 2;
}
