// A TCP port for a test to bind a server to by number (a restart on the same address, a program
// that takes its port on the command line).

import { createServer } from "node:net";

/** A port nothing listens on now: the kernel's choice, released before the caller binds it. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === "string") throw new Error("no free port");
  return address.port;
}
