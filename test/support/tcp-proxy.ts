// A TCP proxy in front of PostgreSQL that a test can cut and restore, to see how the service
// behaves when its database goes away and comes back, without stopping the shared server. It can
// also hand every relayed connection's two sockets to an observer (the interop suite reads the
// HTTP/2 frames going through).

import type { AddressInfo } from "node:net";
import { connect, createServer, type Server, type Socket } from "node:net";

export class TcpProxy {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  port = 0;

  constructor(
    private readonly targetHost: string,
    private readonly targetPort: number,
    /** Called for each relayed connection, before any byte is relayed. */
    private readonly observe?: (client: Socket, upstream: Socket) => void,
  ) {}

  /** Listens (again, on the same port once it had one) and forwards every connection. */
  async start(): Promise<void> {
    const server = createServer((client) => {
      const upstream = connect(this.targetPort, this.targetHost);
      this.observe?.(client, upstream);
      for (const socket of [client, upstream]) {
        this.sockets.add(socket);
        socket.on("close", () => this.sockets.delete(socket));
        socket.on("error", () => {
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.port, "127.0.0.1", () => resolve());
    });
    this.port = (server.address() as AddressInfo).port;
    this.server = server;
  }

  /** Refuses new connections and drops every open one, as a database that went down would. */
  async cut(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const socket of this.sockets) socket.destroy();
    this.sockets.clear();
    if (server !== undefined) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
