// Attacks on the port of a real service process, each bounded in count and aimed at 127.0.0.1
// only: idle connections after the HTTP/2 preface, slowloris HTTP/1.1, stream floods, rapid
// resets, health Watch floods, oversized and trickling uploads. After each one the process must
// still be up, its resident memory bounded, and a canary call (on a fresh connection) answered.
// Short limits are configured so that the attacks end quickly, yet loose enough that a loaded test
// machine's own clients (the canary) are not taken for attackers; nothing asserts a duration.
// Every attack runs twice: with admission control off and on (the default), where every new
// HTTP/2 connection starts with FIRST_STREAMS streams and a caller's connections are held to its
// share (stream-shares.ts), so that a flood's streams beyond those are reset REFUSED_STREAM by
// nghttp2 before the service sees them: a refusal as good as the service's own.

import { readFileSync } from "node:fs";
import http2 from "node:http2";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { create, toBinary } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GetOrganizationRequestSchema } from "../../gen/connections/v1/organization_service_pb.js";
import { HealthCheckRequestSchema } from "../../gen/grpc/health/v1/health_pb.js";
import { type ServiceProcess, startServiceProcess } from "../support/process.js";
import { closedWithin, envelope, h2Open, h2Request, type WireAnswer } from "../support/wire.js";

const GET_ORGANIZATION = "/connections.v1.OrganizationService/GetOrganization";
const HEALTH_WATCH = "/grpc.health.v1.Health/Watch";
const MAX_HEALTH_WATCHERS = 50;
/** Resident memory may grow by this much over the baseline during an attack, and no more. */
const RSS_HEADROOM_BYTES = 200 * 1024 * 1024;
const PREFACE = Buffer.concat([
  Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1"),
  Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]),
]);

const getOrganization = envelope(
  toBinary(GetOrganizationRequestSchema, create(GetOrganizationRequestSchema, { id: "org_missing" })),
);
const healthCheck = envelope(toBinary(HealthCheckRequestSchema, create(HealthCheckRequestSchema, {})));

const NGHTTP2_REFUSED_STREAM = 7;

/** What refused a request: the service's ErrorInfo reason, or REFUSED_STREAM when nghttp2 reset it unseen. */
function refusalOf(answer: WireAnswer): string | undefined {
  return answer.rstCode === NGHTTP2_REFUSED_STREAM ? "REFUSED_STREAM" : answer.errorInfo?.reason;
}

interface Setting {
  readonly admission: "off" | "on";
  readonly env: Readonly<Record<string, string>>;
  /** Refusals that the service never saw, accepted beside its own. */
  readonly unseenRefusals: readonly string[];
}

const SETTINGS: readonly Setting[] = [
  { admission: "off", env: { ADMISSION_MAX_IN_FLIGHT: "0" }, unseenRefusals: [] },
  { admission: "on", env: {}, unseenRefusals: ["REFUSED_STREAM"] },
];

function rssOf(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kilobytes = /VmRSS:\s+(\d+) kB/.exec(status)?.[1];
  return Number(kilobytes) * 1024;
}

describe.each(SETTINGS)("abuse of the port, admission control $admission", ({ env, unseenRefusals }) => {
  let service: ServiceProcess;
  let baselineRss: number;

  beforeAll(async () => {
    service = await startServiceProcess({
      DATABASE_URL: "sqlite::memory:",
      LOG_LEVEL: "info",
      MAX_REQUEST_BYTES: "65536",
      FIRST_BYTES_TIMEOUT_MS: "5000",
      BODY_READ_TIMEOUT_MS: "1000",
      HTTP1_HEADERS_TIMEOUT_MS: "2000",
      HTTP1_REQUEST_TIMEOUT_MS: "2000",
      HTTP1_KEEP_ALIVE_TIMEOUT_MS: "2000",
      HTTP2_IDLE_TIMEOUT_MS: "5000",
      HTTP2_KEEPALIVE_INTERVAL_MS: "300",
      // Generous: on a loaded machine a busy client may answer a PING late.
      HTTP2_KEEPALIVE_TIMEOUT_MS: "3000",
      HTTP2_MAX_CONCURRENT_STREAMS: "100",
      MAX_HEALTH_WATCHERS: String(MAX_HEALTH_WATCHERS),
      ...env,
    });
    await canary();
    baselineRss = rssOf(service.child.pid as number);
  });

  afterAll(async () => {
    await service?.stop();
  });

  /** A new HTTP/2 connection to the service; its failures are the attack's, not the test's. */
  function connect(): http2.ClientHttp2Session {
    const session = http2.connect(`http://127.0.0.1:${service.port}`);
    session.on("error", () => {});
    return session;
  }

  /** A call on a fresh connection must be answered (NOT_FOUND for an organization that does not exist). */
  async function canary(): Promise<void> {
    const session = connect();
    try {
      const answer = await h2Request(
        session,
        {
          path: GET_ORGANIZATION,
          headers: { "content-type": "application/grpc", authorization: "Bearer dev-provisioning" },
          body: getOrganization,
        },
        20_000,
      );
      expect(
        answer.errorInfo?.reason,
        `${answer.code} ${answer.message} HTTP ${answer.httpStatus} RST ${answer.rstCode} ${answer.clientError}`,
      ).toBe("ORGANIZATION_NOT_FOUND");
    } finally {
      session.destroy();
    }
  }

  async function expectHealthy(): Promise<void> {
    expect(service.child.exitCode, "the process is still running").toBeNull();
    await canary();
    expect(rssOf(service.child.pid as number)).toBeLessThan(baselineRss + RSS_HEADROOM_BYTES);
  }

  it("drops 300 connections that send only the HTTP/2 preface, and answers others meanwhile", async () => {
    const sockets = Array.from({ length: 300 }, () => {
      const socket = net.connect(service.port, "127.0.0.1");
      socket.on("error", () => {});
      socket.write(PREFACE);
      return socket;
    });
    await canary();
    await Promise.all(sockets.map((socket) => closedWithin(socket, 20_000)));
    await expectHealthy();
  });

  it("closes 100 slowloris HTTP/1.1 connections", async () => {
    const sockets = Array.from({ length: 100 }, () => {
      const socket = net.connect(service.port, "127.0.0.1");
      socket.on("error", () => {});
      socket.write(`POST ${GET_ORGANIZATION} HTTP/1.1\r\nHost: x\r\n`);
      return socket;
    });
    const trickle = setInterval(() => {
      for (const socket of sockets) if (!socket.destroyed) socket.write("X-Slow: 1\r\n");
    }, 100);
    try {
      await canary();
      await Promise.all(sockets.map((socket) => closedWithin(socket, 20_000)));
    } finally {
      clearInterval(trickle);
    }
    await expectHealthy();
  });

  it("survives a flood of streams that never finish their request", async () => {
    const sessions = Array.from({ length: 5 }, connect);
    const answers: Promise<unknown>[] = [];
    for (const session of sessions) {
      for (let index = 0; index < 100; index++) {
        for (const contentType of ["application/grpc", "application/proto"]) {
          try {
            const { answer } = h2Open(
              session,
              { path: GET_ORGANIZATION, headers: { "content-type": contentType }, body: Buffer.from([0]) },
              30_000,
            );
            answers.push(answer.catch(() => undefined));
          } catch {
            // The session refused more streams than SETTINGS_MAX_CONCURRENT_STREAMS: as it should.
          }
        }
      }
    }
    await canary();
    await Promise.all(answers);
    for (const session of sessions) session.destroy();
    await expectHealthy();
  });

  it("survives rapid resets", async () => {
    const session = connect();
    for (let index = 0; index < 3_000 && !session.destroyed && !session.closed; index++) {
      try {
        const stream = session.request({
          ":method": "POST",
          ":path": GET_ORGANIZATION,
          "content-type": "application/grpc",
        });
        stream.on("error", () => {});
        stream.close(http2.constants.NGHTTP2_CANCEL);
      } catch {
        break;
      }
      if (index % 100 === 0) await sleep(0);
    }
    session.destroy();
    await expectHealthy();
  });

  it("caps a flood of health Watch streams, and gives the memory back when they go", async () => {
    const sessions = Array.from({ length: 10 }, connect);
    const opened = sessions.length * 60;
    const beyondCap = opened - MAX_HEALTH_WATCHERS;
    let refused = 0;
    let allRefused = () => {};
    const refusedBeyondCap = new Promise<void>((resolve) => {
      allRefused = resolve;
    });
    const answers: Promise<unknown>[] = [];
    for (const session of sessions) {
      for (let index = 0; index < 60; index++) {
        const { stream, answer } = h2Open(
          session,
          { path: HEALTH_WATCH, headers: { "content-type": "application/grpc" }, body: healthCheck },
          60_000,
        );
        stream.end();
        answers.push(
          answer.then(
            (received) => {
              const refusal = refusalOf(received);
              const counted = refusal === "TOO_MANY_WATCHERS" || unseenRefusals.includes(refusal ?? "");
              if (counted && ++refused === beyondCap) allRefused();
            },
            () => undefined,
          ),
        );
      }
    }
    await canary();
    // Beyond the cap, Watch ends at once with RESOURCE_EXHAUSTED TOO_MANY_WATCHERS (or, with
    // admission control, is reset unseen beyond the connection's first streams); the rest stay open.
    await refusedBeyondCap;
    for (const session of sessions) session.destroy();
    await Promise.all(answers);
    await expectHealthy();
  });

  it("refuses 200 uploads that declare 200 MB, and trickling bodies, without holding their memory", async () => {
    const sessions = Array.from({ length: 4 }, connect);
    const declared = Buffer.alloc(5);
    declared.writeUInt32BE(200 * 1024 * 1024, 1);
    const answers: Promise<unknown>[] = [];
    for (let index = 0; index < 200; index++) {
      const session = sessions[index % sessions.length] as http2.ClientHttp2Session;
      const contentType = ["application/grpc", "application/grpc-web+proto", "application/grpc+json"][
        index % 3
      ] as string;
      const { stream, answer } = h2Open(
        session,
        {
          path: GET_ORGANIZATION,
          headers: { "content-type": contentType, authorization: "Bearer dev-provisioning" },
          body: Buffer.concat([declared, Buffer.alloc(1024)]),
        },
        30_000,
      );
      answers.push(
        answer.then(
          (received) => expect(["REQUEST_TOO_LARGE", ...unseenRefusals], contentType).toContain(refusalOf(received)),
          () => stream.destroy(),
        ),
      );
    }
    await Promise.all(answers);
    for (const session of sessions) session.destroy();
    await expectHealthy();
  });
});
