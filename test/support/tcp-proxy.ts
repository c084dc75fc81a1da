// A TCP proxy in front of PostgreSQL that a test can cut and restore, or freeze and thaw, to see
// how the service behaves when its database goes away and comes back, without stopping the
// shared server. Cut: connections are reset and new ones refused (a database that went down).
// Freeze: connections stay open and new ones are accepted, but no byte moves either way and
// nothing is reset (a hung database, a partition, a black-holed route). It can also hand every
// relayed connection's two sockets to an observer (the interop suite reads the HTTP/2 frames
// going through).

import type { AddressInfo } from "node:net";
import { connect, createServer, type Server, type Socket } from "node:net";

export class TcpProxy {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  /** While frozen, what each side sent, held back until thawed. */
  private held: { to: Socket; chunk: Buffer }[] | undefined;
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
      this.forward(client, upstream);
      this.forward(upstream, client);
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

  /** Stops forwarding: no packets, no reset, until thaw(). */
  freeze(): void {
    this.held ??= [];
  }

  /** Forwards again, including what was held back (what the peers would get after a stall). */
  thaw(): void {
    const held = this.held ?? [];
    this.held = undefined;
    for (const { to, chunk } of held) if (!to.destroyed) to.write(chunk);
  }

  private forward(from: Socket, to: Socket): void {
    from.on("data", (chunk: Buffer) => {
      if (this.held !== undefined) this.held.push({ to, chunk });
      else if (!to.destroyed) to.write(chunk);
    });
    from.on("end", () => to.end());
  }
}
