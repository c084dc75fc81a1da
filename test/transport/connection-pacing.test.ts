// New connections handed to the HTTP servers a few per turn of the event loop: the pacer's order and
// bounds on sockets of its own, then a real server under a burst of new connections (every call
// answered, on TLS too), and a drain in the middle of such a burst (no call left hanging; that the
// drain hands waiting connections over rather than dropping them is the pacer's flush, above).

import http2 from "node:http2";
import net from "node:net";
import { setImmediate as nextTurn } from "node:timers/promises";
import { create, toBinary } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { GetOrganizationRequestSchema } from "../../gen/connections/v1/organization_service_pb.js";
import { ConnectionPacer, NEW_CONNECTIONS_PER_TURN } from "../../src/transport/connection-pacing.js";
import { FIRST_STREAMS } from "../../src/transport/stream-shares.js";
import { createTestPki } from "../support/certificates.js";
import { envelope, h2Request, type WireAnswer } from "../support/wire.js";
import { bearer, startTestServer } from "./harness.js";

const GET_ORGANIZATION = "/connections.v1.OrganizationService/GetOrganization";

describe("ConnectionPacer", () => {
  it("hands over NEW_CONNECTIONS_PER_TURN a turn, oldest first, newcomers behind those waiting", async () => {
    const pacer = new ConnectionPacer();
    const handed: number[] = [];
    const admit = (index: number) => pacer.admit(new net.Socket(), () => handed.push(index));
    for (let index = 0; index < 2 * NEW_CONNECTIONS_PER_TURN + 3; index++) admit(index);
    expect(handed).toEqual([...Array(NEW_CONNECTIONS_PER_TURN).keys()]);
    expect(pacer.waiting).toBe(NEW_CONNECTIONS_PER_TURN + 3);

    await nextTurn();
    expect(handed).toHaveLength(2 * NEW_CONNECTIONS_PER_TURN);
    // A newcomer while others wait goes behind them, even in a turn with room.
    admit(100);
    await nextTurn();
    expect(handed).toEqual([...Array(2 * NEW_CONNECTIONS_PER_TURN + 3).keys(), 100]);
    expect(pacer.waiting).toBe(0);
  });

  it("skips a connection that closed while it waited, and survives its error", async () => {
    const pacer = new ConnectionPacer(1);
    const handed: string[] = [];
    pacer.admit(new net.Socket(), () => handed.push("first"));
    const reset = new net.Socket();
    pacer.admit(reset, () => handed.push("reset"));
    pacer.admit(new net.Socket(), () => handed.push("third"));
    // A reset while it waits: nobody else listens for its errors yet, and it must not crash us.
    reset.emit("error", new Error("ECONNRESET"));
    expect(reset.destroyed).toBe(true);
    await nextTurn();
    expect(handed).toEqual(["first", "third"]);
    // The error listener it was given while waiting is gone once it left the queue.
    expect(reset.listenerCount("error")).toBe(0);
  });

  it("hands every waiting connection over at once when flushed (a drain sends them GOAWAY with the rest)", async () => {
    const pacer = new ConnectionPacer(1);
    const handed: string[] = [];
    for (const name of ["first", "second", "third"]) pacer.admit(new net.Socket(), () => handed.push(name));
    expect(handed).toEqual(["first"]);
    pacer.flush();
    expect(handed).toEqual(["first", "second", "third"]);
    expect(pacer.waiting).toBe(0);
  });
});

describe("a burst of new connections", () => {
  const body = envelope(
    Buffer.from(toBinary(GetOrganizationRequestSchema, create(GetOrganizationRequestSchema, { id: "org_a" }))),
  );
  /** Opens `connections` sessions at once, each sending FIRST_STREAMS calls at once; settles every answer. */
  async function burst(url: string, connections: number, options: http2.SecureClientSessionOptions = {}) {
    const sessions = Array.from({ length: connections }, () =>
      // A drain resets connections it had not handed over yet: their calls fail, which is checked.
      http2.connect(url, options).on("error", () => {}),
    );
    try {
      const answers = sessions.flatMap((session) =>
        Array.from({ length: FIRST_STREAMS }, () =>
          h2Request(session, {
            path: GET_ORGANIZATION,
            headers: { "content-type": "application/grpc", ...bearer("dev-provisioning") },
            body,
          }),
        ),
      );
      return await Promise.allSettled(answers);
    } finally {
      for (const session of sessions) session.destroy();
    }
  }
  const codes = (settled: PromiseSettledResult<WireAnswer>[]) =>
    settled.map((result) => (result.status === "fulfilled" ? result.value.code : result.reason));

  it("answers every call of every connection, over h2c and TLS alike", async () => {
    const connections = 6 * NEW_CONNECTIONS_PER_TURN;
    const plain = await startTestServer();
    try {
      expect(new Set(codes(await burst(plain.baseUrl, connections)))).toEqual(new Set([0]));
    } finally {
      await plain.running.close(500);
    }
    const pki = createTestPki();
    try {
      const certificate = pki.issue("server", { ips: ["127.0.0.1"] });
      const secure = await startTestServer({}, undefined, {
        cert: certificate.cert,
        key: certificate.key,
        ca: undefined,
      });
      try {
        const settled = await burst(`https://${secure.address}`, connections, { ca: pki.ca.cert });
        expect(new Set(codes(settled))).toEqual(new Set([0]));
      } finally {
        await secure.running.close(500);
      }
    } finally {
      pki.remove();
    }
  });

  it("drains in the middle of a burst of new connections without leaving a call hanging", async () => {
    const server = await startTestServer();
    const connections = 6 * NEW_CONNECTIONS_PER_TURN;
    const answered = burst(server.baseUrl, connections);
    // The drain starts once the first connections are served, while later ones are still arriving.
    await server.waitForObserved(GET_ORGANIZATION, 0);
    await server.running.close(500);
    const settled = await answered;
    expect(settled).toHaveLength(connections * FIRST_STREAMS);
    const outcomes = codes(settled).map(String);
    // Answered before or during the drain, or refused with the connection: never a timeout.
    expect(outcomes).toContain("0");
    expect(outcomes.filter((outcome) => /no answer within/.test(outcome))).toEqual([]);
  });
});
