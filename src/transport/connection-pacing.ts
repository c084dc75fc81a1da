// New connections handed to the HTTP servers at most NEW_CONNECTIONS_PER_TURN per turn of the event
// loop, first come first served. A new HTTP/2 connection's first read brings its client's first
// burst (up to FIRST_STREAMS calls, stream-shares.ts), and node:http2 parses and starts all of it at
// once, before any caller is known, so the per-caller read budget cannot stop it. A storm that opens
// 200 connections at once brought 3,200 calls into one or two turns of the loop, half a second each
// while its code was still cold, and every other caller's call waited for them (docs/performance.md,
// "a storm's first half second"). Held back here, a connection's bytes wait where they are (already
// read, or in the kernel) for a later turn, while connections that are already open are read and
// answered in between. A client that opens a few connections never waits.

import type { Socket } from "node:net";

/** Connections handed over per turn: a few of them, not a storm's hundreds, bring their bursts at once. */
export const NEW_CONNECTIONS_PER_TURN = 8;

export class ConnectionPacer {
  /** Handed over in this turn of the loop. */
  #handedThisTurn = 0;
  /** Waiting for a later turn, oldest first, with what hands each over. */
  readonly #waiting: { readonly socket: Socket; readonly handOver: () => void; readonly onError: () => void }[] = [];
  #turnEnd: NodeJS.Immediate | undefined;

  constructor(private readonly perTurn = NEW_CONNECTIONS_PER_TURN) {}

  /** Connections waiting for their turn. */
  get waiting(): number {
    return this.#waiting.length;
  }

  /** Hands `socket` over now if this turn has room and none waits before it; else in a later turn. */
  admit(socket: Socket, handOver: () => void): void {
    if (this.#waiting.length === 0 && this.#handedThisTurn < this.perTurn) {
      this.#handedThisTurn++;
      this.#scheduleTurnEnd();
      handOver();
      return;
    }
    // Nobody else listens while it waits: a reset then would be an uncaught error.
    const onError = () => socket.destroy();
    socket.on("error", onError);
    this.#waiting.push({ socket, handOver, onError });
    this.#scheduleTurnEnd();
  }

  /** Hands every waiting connection over now: a drain sends them GOAWAY with the others, as if none had waited. */
  flush(): void {
    this.#handOver(Number.POSITIVE_INFINITY);
  }

  #scheduleTurnEnd(): void {
    // Immediates run once this turn's reads are done; one set during them runs in the next turn.
    this.#turnEnd ??= setImmediate(() => this.#nextTurn());
  }

  #nextTurn(): void {
    this.#turnEnd = undefined;
    this.#handedThisTurn = 0;
    this.#handOver(this.perTurn);
    if (this.#waiting.length > 0 || this.#handedThisTurn > 0) this.#scheduleTurnEnd();
  }

  /** Hands over waiting connections, oldest first, until `limit` were handed over in this turn. */
  #handOver(limit: number): void {
    while (this.#waiting.length > 0 && this.#handedThisTurn < limit) {
      const next = this.#waiting.shift();
      if (next === undefined) break;
      next.socket.off("error", next.onError);
      if (next.socket.destroyed) continue;
      this.#handedThisTurn++;
      next.handOver();
    }
  }
}
