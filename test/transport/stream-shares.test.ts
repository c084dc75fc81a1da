// Per-caller stream limits through the real port: with admission control, a connection starts with
// FIRST_STREAMS; once it carries one caller's gRPC calls it is held (SETTINGS_MAX_CONCURRENT_STREAMS)
// to that caller's share of the admission limit spread over its connections, plus room for its
// health streams; a second caller's connection gets its own; a connection that carries more than
// one caller, or calls of no known caller, or only health checks, gets HTTP2_MAX_CONCURRENT_STREAMS;
// grpc-js clients whose calls go beyond a limit they have not seen yet have the refused ones
// retried without seeing an error; and a caller whose calls read in one turn of the event loop reach
// its share has its connections' reading stopped until the loop turns.

import http2 from "node:http2";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { afterEach, describe, expect, it } from "vitest";
import { ConnectionService, GetConnectionRequestSchema } from "../../gen/connections/v1/connection_service_pb.js";
import { AdmissionController, DEFAULT_ADMISSION_SETTINGS } from "../../src/api/rpc/admission.js";
import { BATCHED_STREAMS, FIRST_STREAMS } from "../../src/transport/stream-shares.js";
import { H2FrameTap } from "../interop/h2-frame-tap.js";
import { until } from "../support/until.js";
import { envelope, h2Open, h2Request, type WireAnswer } from "../support/wire.js";
import { bearer, GrpcJsClient, HOLD_ID, SLEEP_PREFIX, startTestServer, type TestServer } from "./harness.js";

const CONFIGURED_STREAMS = 1000;
const GET_PATH = "/connections.v1.ConnectionService/GetConnection";
const HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check";
const HEALTH_WATCH_PATH = "/grpc.health.v1.Health/Watch";
const actingFor = { "x-organization-id": "org_a" };
const tokenService = { ...bearer("dev-token-service"), ...actingFor };
const dashboard = { ...bearer("dev-dashboard-bff"), ...actingFor };
const NGHTTP2_REFUSED_STREAM = 7;
const NGHTTP2_ENHANCE_YOUR_CALM = 11;

/** A GetConnection body; the test stubs answer `cxn_1` from memory and sleep for an id with SLEEP_PREFIX. */
const getBody = (id: string) =>
  envelope(toBinary(GetConnectionRequestSchema, create(GetConnectionRequestSchema, { id })));
/** A call that waits on the store for 5 ms: its caller is never answered at once (BATCHED_STREAMS). */
const WAITS_ON_STORE = `${SLEEP_PREFIX}5`;

/** Admission control whose limit starts at `limit` (the ceiling's borrowable part, or a floor reached by a storm). */
function controllerAt(limit: number): AdmissionController {
  const controller = new AdmissionController({
    maxInFlight: 1000,
    minInFlight: limit,
    targetDelayMs: 50,
    callerIdleMs: 600_000,
    pushbackMs: 100,
    maxQueued: DEFAULT_ADMISSION_SETTINGS.maxQueued,
  });
  while (controller.limit > limit) controller.adapt(Number.POSITIVE_INFINITY);
  return controller;
}

describe("per-caller stream limits", () => {
  let server: TestServer;
  const sessions: http2.ClientHttp2Session[] = [];

  afterEach(async () => {
    for (const session of sessions.splice(0)) session.destroy();
    await server.running.close(1_000);
  });

  async function connect(): Promise<http2.ClientHttp2Session> {
    const session = http2.connect(server.baseUrl);
    session.on("error", () => {});
    sessions.push(session);
    await new Promise((resolve) => session.once("remoteSettings", resolve));
    return session;
  }

  /** A binary gRPC GetConnection (the fast path) with these headers; the answer follows any SETTINGS sent for it. */
  function grpcGet(
    session: http2.ClientHttp2Session,
    headers: Record<string, string>,
    id = "cxn_1",
  ): Promise<WireAnswer> {
    return h2Request(session, {
      path: GET_PATH,
      headers: { "content-type": "application/grpc", te: "trailers", ...headers },
      body: getBody(id),
    });
  }

  const limitOf = (session: http2.ClientHttp2Session) => session.remoteSettings.maxConcurrentStreams;

  /**
   * Sends the token service's checks answered from memory on every one of `connections` until
   * `admission` finds the caller quick and each connection carries BATCHED_STREAMS. A caller is
   * quick by the moving average of its calls' work, so one slow first call (cold code, a loaded
   * machine) keeps it slow until more quick calls bring it down. (A new connection may carry as
   * many streams before its first call, so the limit alone does not say the caller was found quick.)
   */
  async function untilQuick(
    admission: AdmissionController,
    connections: readonly http2.ClientHttp2Session[],
    what: string,
  ): Promise<void> {
    await until(async () => {
      const quick = admission.quick("token-service");
      if (quick && connections.every((session) => limitOf(session) === BATCHED_STREAMS)) return true;
      for (const session of connections) expect((await grpcGet(session, tokenService)).code).toBe(0);
      return false;
    }, what);
  }

  it("holds each caller's connections to its share, spread over them, and leaves health-only connections alone", async () => {
    server = await startTestServer({ http2MaxConcurrentStreams: CONFIGURED_STREAMS }, controllerAt(900));
    const health = await connect();
    expect(limitOf(health)).toBe(FIRST_STREAMS);
    const answered = await h2Request(health, {
      path: HEALTH_CHECK_PATH,
      headers: { "content-type": "application/grpc", te: "trailers" },
      body: envelope(new Uint8Array()),
    });
    expect(answered.code).toBe(0);
    expect(limitOf(health)).toBe(CONFIGURED_STREAMS);

    // The token service alone: the whole limit is its share, on its one connection.
    const token = await connect();
    expect(limitOf(token)).toBe(FIRST_STREAMS);
    expect((await grpcGet(token, tokenService)).code).toBe(0);
    await until(() => limitOf(token) === 900, "the token service's connection to get its share");

    // The dashboard arrives: two active callers share 900.
    const dashboardSession = await connect();
    expect((await grpcGet(dashboardSession, dashboard)).code).toBe(0);
    await until(() => limitOf(dashboardSession) === 450, "the dashboard's connection to get its share");
    await until(() => limitOf(token) === 450, "the token service's connection to follow its share");

    // A second token-service connection: the share is spread over both; the dashboard keeps its own.
    const secondToken = await connect();
    expect((await grpcGet(secondToken, tokenService)).code).toBe(0);
    await until(() => limitOf(secondToken) === 225, "the second token-service connection to get half the share");
    await until(() => limitOf(token) === 225, "the first token-service connection to take half the share");
    expect(limitOf(dashboardSession)).toBe(450);
    expect(limitOf(health)).toBe(CONFIGURED_STREAMS);
  });

  it("never holds a connection that carries a second caller, calls of nobody, or a Connect call", async () => {
    server = await startTestServer({ http2MaxConcurrentStreams: CONFIGURED_STREAMS }, controllerAt(900));
    const token = await connect();
    expect((await grpcGet(token, tokenService)).code).toBe(0);
    await until(() => limitOf(token) === 900, "the token service's connection to get its share");

    // A proxy's connection: the token service's call, then the dashboard's on the same connection.
    const proxy = await connect();
    expect((await grpcGet(proxy, tokenService)).code).toBe(0);
    expect(limitOf(proxy)).toBeLessThan(CONFIGURED_STREAMS);
    expect((await grpcGet(proxy, dashboard)).code).toBe(0);
    expect(limitOf(proxy)).toBe(CONFIGURED_STREAMS);

    // A token-service call that goes through connect-node (the Connect protocol): caller not learnt here.
    const connectSession = await connect();
    expect((await grpcGet(connectSession, tokenService)).code).toBe(0);
    const viaConnect = await h2Request(connectSession, {
      path: GET_PATH,
      headers: { "content-type": "application/proto", "connect-protocol-version": "1", ...tokenService },
      body: Buffer.from(toBinary(GetConnectionRequestSchema, create(GetConnectionRequestSchema, { id: "cxn_1" }))),
    });
    expect(viaConnect.httpStatus).toBe(200);
    expect(limitOf(connectSession)).toBe(CONFIGURED_STREAMS);

    // A call that authenticates as nobody first: never held, even when a caller follows.
    const anonymous = await connect();
    expect((await grpcGet(anonymous, actingFor)).code).toBe(16);
    expect((await grpcGet(anonymous, tokenService)).code).toBe(0);
    expect(limitOf(anonymous)).toBe(CONFIGURED_STREAMS);

    // They stay released: a new token-service connection moves the first one's limit at the next
    // recomputation, which leaves the mixed ones where they are, whoever calls on them next.
    const before = limitOf(token);
    const another = await connect();
    expect((await grpcGet(another, tokenService)).code).toBe(0);
    await until(() => limitOf(token) !== before, "a recomputation of the token service's connections");
    expect((await grpcGet(proxy, tokenService)).code).toBe(0);
    for (const mixed of [proxy, connectSession, anonymous]) expect(limitOf(mixed)).toBe(CONFIGURED_STREAMS);
  });

  it("keeps one stream for calls however small the share, and one more for each health Watch open beside them", async () => {
    server = await startTestServer({ http2MaxConcurrentStreams: CONFIGURED_STREAMS }, controllerAt(2));
    // Calls that wait on the store: a caller answered at once gets BATCHED_STREAMS instead (below).
    const first = await connect();
    const second = await connect();
    for (const session of [first, second]) expect((await grpcGet(session, tokenService, WAITS_ON_STORE)).code).toBe(0);
    // A share of 2 over three connections: none would get a stream without the floor of one.
    const watching = await connect();
    const watch = h2Open(watching, {
      path: HEALTH_WATCH_PATH,
      headers: { "content-type": "application/grpc", te: "trailers" },
      body: envelope(new Uint8Array()),
    });
    watch.stream.end();
    await new Promise((resolve) => watch.stream.once("data", resolve));
    expect(limitOf(watching)).toBe(CONFIGURED_STREAMS);
    expect((await grpcGet(watching, tokenService, WAITS_ON_STORE)).code).toBe(0);
    expect(limitOf(watching)).toBe(2);
    await until(() => limitOf(first) === 1, "the first connection to take its part of the share");
    // The Watch holds one of the two streams; calls still have the other.
    expect((await grpcGet(watching, tokenService, WAITS_ON_STORE)).code).toBe(0);
    watch.stream.close();
    await watch.answer;
  });

  /** `count` connections of the token service, each carrying BATCHED_STREAMS. */
  async function quickConnections(admission: AdmissionController, count: number): Promise<http2.ClientHttp2Session[]> {
    const connections: http2.ClientHttp2Session[] = [];
    for (let index = 0; index < count; index++) connections.push(await connect());
    await untilQuick(admission, connections, "the flooding caller's connections to carry BATCHED_STREAMS");
    return connections;
  }

  /**
   * Five rounds of BATCHED_STREAMS checks written at once on each flooding connection, with one
   * dashboard call beside each round; the status codes of the calls that failed.
   */
  async function floodRounds(
    flooding: readonly http2.ClientHttp2Session[],
    dashboardSession: http2.ClientHttp2Session,
  ): Promise<(number | undefined)[]> {
    const failures: (number | undefined)[] = [];
    for (let round = 0; round < 5; round++) {
      const answers = await Promise.all([
        ...flooding.flatMap((session) => Array.from({ length: BATCHED_STREAMS }, () => grpcGet(session, tokenService))),
        grpcGet(dashboardSession, dashboard),
      ]);
      failures.push(...answers.map((answer) => answer.code).filter((code) => code !== 0));
    }
    return failures;
  }

  it("gives a caller answered at once BATCHED_STREAMS on each connection however small its share, and its share alone once its calls wait on the store", async () => {
    const admission = controllerAt(2);
    server = await startTestServer({ http2MaxConcurrentStreams: CONFIGURED_STREAMS }, admission);
    const connections = [await connect(), await connect(), await connect()];
    // Checks answered from memory: a share of 2 over three connections would leave one stream each.
    await untilQuick(admission, connections, "each connection of a caller answered at once to carry BATCHED_STREAMS");
    // Its calls now wait on the store: its excess must wait in its client again.
    for (const session of connections) {
      expect((await grpcGet(session, tokenService, `${SLEEP_PREFIX}20`)).code).toBe(0);
    }
    await until(
      () => connections.every((session) => limitOf(session) === 1),
      "each connection to go back to its part of the share",
    );
  });

  it("keeps a quick caller's batched connections to its read budget per turn while it floods, and another caller answered", async () => {
    const admission = controllerAt(4);
    server = await startTestServer({ http2MaxConcurrentStreams: CONFIGURED_STREAMS }, admission);
    const flooding = await quickConnections(admission, 10);
    const dashboardSession = await connect();
    // Rounds of 160 checks in flight, each connection's 16 written at once: more than the caller's
    // share (4) arrives in one read, so its connections stop reading until the loop turns.
    expect(await floodRounds(flooding, dashboardSession)).toEqual([]);
    expect(server.readsHeld).toContain("token-service");
    expect(server.readsHeld).not.toContain("dashboard-bff");
  });

  it("starts a flooding caller's stopped connections a few per turn, in rotation, not all of them every turn", async () => {
    const admission = controllerAt(8);
    server = await startTestServer({ http2MaxConcurrentStreams: CONFIGURED_STREAMS }, admission);
    const flooding = await quickConnections(admission, 40);
    const dashboardSession = await connect();
    // Every socket handle shares the prototype; only the read budget stops a socket's reading.
    const socket = dashboardSession.socket as unknown as { _handle: object };
    const prototype = Object.getPrototypeOf(socket._handle) as { readStop(): number };
    const readStop = prototype.readStop;
    let stops = 0;
    prototype.readStop = function (this: unknown) {
      stops++;
      return readStop.call(this);
    };
    const heldBefore = server.readsHeld.length;
    try {
      expect(await floodRounds(flooding, dashboardSession)).toEqual([]);
    } finally {
      prototype.readStop = readStop;
    }
    // Turns in which the caller reached its budget of 8: each stopped the two or three connections
    // started for it (their streams fill the budget twice over), where stopping every connection
    // of the caller would have been 40 a turn.
    const turnsAtBudget = server.readsHeld.length - heldBefore;
    expect(turnsAtBudget).toBeGreaterThan(10);
    expect(stops).toBeLessThanOrEqual(4 * turnsAtBudget);
  });

  it("keeps the connection of a client that had more than 1,000 streams refused while catching up", async () => {
    server = await startTestServer({ http2MaxConcurrentStreams: CONFIGURED_STREAMS }, controllerAt(FIRST_STREAMS));
    const tap = await H2FrameTap.start(server.running.port);
    try {
      // The client sends all its calls before it can have read any SETTINGS (the link is stalled):
      // all but FIRST_STREAMS are refused, and node counts each refusal as an invalid frame.
      tap.freeze();
      // Before the server's SETTINGS, node's client assumes 100 streams unless told otherwise.
      const session = http2.connect(`http://${tap.address}`, { peerMaxConcurrentStreams: 2000 });
      session.on("error", () => {});
      sessions.push(session);
      const calls = Array.from({ length: 1100 }, () => grpcGet(session, tokenService));
      await until(() => tap.fromClient.headers >= calls.length, "the calls to be on the wire");
      tap.thaw();
      const answers = await Promise.all(calls);
      const refused = answers.filter((answer) => answer.rstCode === NGHTTP2_REFUSED_STREAM).length;
      expect(refused).toBeGreaterThan(1000);
      expect(answers.filter((answer) => answer.rstCode !== NGHTTP2_REFUSED_STREAM && answer.code !== 0)).toEqual([]);
      expect(tap.fromService.goaways).toEqual([]);
      expect((await grpcGet(session, tokenService)).code).toBe(0);
    } finally {
      await tap.close();
    }
  });

  it("stops reading a caller's connections for the rest of a turn once its calls read in that turn reach its share, and reads them the next", async () => {
    // The token service alone: its share (its streams, and its reads per turn) is the whole limit.
    server = await startTestServer({ http2MaxConcurrentStreams: CONFIGURED_STREAMS }, controllerAt(FIRST_STREAMS));
    const tap = await H2FrameTap.start(server.running.port);
    try {
      const session = http2.connect(`http://${tap.address}`);
      session.on("error", () => {});
      sessions.push(session);
      await new Promise((resolve) => session.once("remoteSettings", resolve));
      // As many calls as its share (and as a new connection may open) reach the service in one read.
      tap.freeze();
      const calls = Array.from({ length: FIRST_STREAMS }, () => grpcGet(session, tokenService));
      await until(() => tap.fromClient.headers >= FIRST_STREAMS, "the calls to be on the wire");
      tap.thaw();
      // Each is answered: reading stops, answering does not.
      for (const answer of await Promise.all(calls)) expect(answer.code).toBe(0);
      expect(server.readsHeld).toEqual(["token-service"]);
      // The loop turned: the connection is read again.
      expect((await grpcGet(session, tokenService)).code).toBe(0);
      // A caller within its reads per turn is never held.
      const dashboardSession = await connect();
      expect((await grpcGet(dashboardSession, dashboard)).code).toBe(0);
      expect(server.readsHeld).toEqual(["token-service"]);
    } finally {
      await tap.close();
    }
  });

  it("counts a caller's reads per turn afresh each turn: calls one turn at a time are never held, however many", async () => {
    server = await startTestServer({ http2MaxConcurrentStreams: CONFIGURED_STREAMS }, controllerAt(4));
    const session = await connect();
    // Three times its share, each call answered before the next is sent: one read per turn.
    for (let call = 0; call < 12; call++) expect((await grpcGet(session, tokenService)).code).toBe(0);
    expect(server.readsHeld).toEqual([]);
  });

  it("makes a call beyond the caller's share wait in its client for a stream, instead of being refused OVERLOADED", async () => {
    server = await startTestServer({ http2MaxConcurrentStreams: CONFIGURED_STREAMS }, controllerAt(FIRST_STREAMS));
    const client = new GrpcJsClient(server.address);
    try {
      const method = ConnectionService.method.getConnection;
      const holding = Array.from({ length: FIRST_STREAMS }, () =>
        client.call(method, { id: HOLD_ID }, { headers: tokenService }),
      );
      await until(() => server.stubs.held === FIRST_STREAMS, "the token service to hold its whole share");
      // Admission would refuse this one (the caller is at its share and the replica at its limit);
      // the connection's limit keeps it in grpc-js until a stream frees.
      const beyond = client.call(method, { id: "cxn_beyond" }, { headers: tokenService });
      server.stubs.releaseHolds();
      for (const outcome of [...(await Promise.all(holding)), await beyond]) expect(outcome.ok).toBe(true);
      expect(server.observed.filter((entry) => entry.code === Code.ResourceExhausted)).toEqual([]);
    } finally {
      client.close();
    }
  });

  it("lets a grpc-js client that starts with more calls than a new connection may carry finish them all", async () => {
    server = await startTestServer({ http2MaxConcurrentStreams: CONFIGURED_STREAMS }, controllerAt(900));
    const client = new GrpcJsClient(server.address);
    try {
      const outcomes = await Promise.all(
        Array.from({ length: 5 * FIRST_STREAMS }, () =>
          client.call(ConnectionService.method.getConnection, { id: `${SLEEP_PREFIX}20` }, { headers: tokenService }),
        ),
      );
      expect(outcomes.filter((outcome) => !outcome.ok)).toEqual([]);
    } finally {
      client.close();
    }
  });

  it("lets a grpc-js client whose connection is lowered while its calls are on the wire finish every call without an error", async () => {
    // A share of 8: alone on one connection, the token service may have 8 streams; with a second
    // connection, 4 on each.
    server = await startTestServer({ http2MaxConcurrentStreams: CONFIGURED_STREAMS }, controllerAt(8));
    const tap = await H2FrameTap.start(server.running.port);
    const client = new GrpcJsClient(tap.address);
    try {
      const method = ConnectionService.method.getConnection;
      expect((await client.call(method, { id: WAITS_ON_STORE }, { headers: tokenService })).ok).toBe(true);
      await until(() => tap.fromService.maxConcurrentStreams.at(-1) === 8, "the token service's share to be sent");
      // The service sends no other SETTINGS before the client acknowledged this one.
      await until(
        () => tap.fromClient.settingsAcks >= tap.fromService.maxConcurrentStreams.length,
        "the client to acknowledge the limit of 8",
      );

      // The link stalls; meanwhile a second token-service connection halves the share of the first.
      tap.freeze();
      const second = await connect();
      expect((await grpcGet(second, tokenService, WAITS_ON_STORE)).code).toBe(0);
      await until(() => tap.fromService.maxConcurrentStreams.at(-1) === 4, "the lowered limit to be sent");

      // The client still believes in 8 and sends 8 calls; the service has said 4.
      const headersBefore = tap.fromClient.headers;
      const calls = Array.from({ length: 8 }, () =>
        client.call(method, { id: `${SLEEP_PREFIX}50` }, { headers: tokenService }),
      );
      await until(() => tap.fromClient.headers >= headersBefore + 8, "the 8 calls to be on the wire");
      tap.thaw();

      const outcomes = await Promise.all(calls);
      expect(outcomes.filter((outcome) => !outcome.ok)).toEqual([]);
      // The calls beyond the new limit were refused before the service saw them, and retried.
      expect(tap.fromService.resets).toContain(NGHTTP2_REFUSED_STREAM);
      expect(tap.fromService.resets).not.toContain(NGHTTP2_ENHANCE_YOUR_CALM);
      expect(tap.fromService.goaways).toEqual([]);
    } finally {
      client.close();
      await tap.close();
    }
  });
});
