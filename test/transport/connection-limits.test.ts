// What one HTTP/2 connection, and the connections together, may hold. An honest client whose
// uploads were refused keeps a usable connection: the ENHANCE_YOUR_CALM resets once blamed on the
// server came from node's own http2 client, which counts the unsent bytes of refused uploads against
// its maxSessionMemory (10 MB by default) and then refuses its own new streams; with room there,
// the server answers every later call. And past MAX_HTTP2_CONNECTIONS the connection idle the
// longest is sent away with GOAWAY instead of every connection being held until its idle timeout.

import http2 from "node:http2";
import { create, toBinary } from "@bufbuild/protobuf";
import { afterEach, describe, expect, it } from "vitest";
import { GetConnectionRequestSchema } from "../../gen/connections/v1/connection_service_pb.js";
import { envelope, h2Open, h2Request } from "../support/wire.js";
import { startTestServer, type TestServer } from "./harness.js";

const GET_CONNECTION = "/connections.v1.ConnectionService/GetConnection";
const headers = {
  "content-type": "application/grpc",
  authorization: "Bearer dev-dashboard-bff",
  "x-organization-id": "org_a",
};
const getConnection = envelope(
  toBinary(GetConnectionRequestSchema, create(GetConnectionRequestSchema, { id: "cxn_a" })),
);

/** A client connection; `maxSessionMemory` in MB is the client's own (see above). */
function connect(server: TestServer, maxSessionMemory = 10): Promise<http2.ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(server.baseUrl, { maxSessionMemory });
    session.once("connect", () => resolve(session));
    session.once("error", reject);
  });
}

describe("HTTP/2 connection limits", () => {
  let server: TestServer | undefined;
  const sessions: http2.ClientHttp2Session[] = [];

  afterEach(async () => {
    for (const session of sessions.splice(0)) session.destroy();
    await server?.running.close(1_000);
  });

  it("keeps a connection usable after 50 concurrent and 30 sequential uploads on it were refused as too large", async () => {
    server = await startTestServer();
    const session = await connect(server, 1_000);
    sessions.push(session);
    // Each declares a 200 MB message and sends its first 250 KB (as far as flow control lets it).
    const declared = Buffer.alloc(5);
    declared.writeUInt32BE(200 * 1024 * 1024, 1);
    const uploads = Array.from({ length: 50 }, () => {
      const { stream, answer } = h2Open(session, { path: GET_CONNECTION, headers, body: declared }, 30_000);
      stream.write(Buffer.alloc(250 * 1024));
      return answer;
    });
    for (const answer of await Promise.all(uploads)) {
      expect(answer.errorInfo?.reason, `RST_STREAM ${answer.rstCode}`).toBe("REQUEST_TOO_LARGE");
    }
    const megabyte = Buffer.alloc(5);
    megabyte.writeUInt32BE(1024 * 1024, 1);
    for (let upload = 0; upload < 30; upload++) {
      const { stream, answer } = h2Open(session, { path: GET_CONNECTION, headers, body: megabyte }, 30_000);
      stream.end(Buffer.alloc(1024 * 1024));
      const refused = await answer;
      expect(refused.errorInfo?.reason, `RST_STREAM ${refused.rstCode}`).toBe("REQUEST_TOO_LARGE");
    }
    // The same connection serves the next calls.
    for (let call = 0; call < 20; call++) {
      const answer = await h2Request(session, { path: GET_CONNECTION, headers, body: getConnection });
      expect(answer.code, `RST_STREAM ${answer.rstCode}`).toBe(0);
    }
  });

  it("sends the connection idle the longest away when MAX_HTTP2_CONNECTIONS is reached, and keeps serving", async () => {
    server = await startTestServer({ maxHttp2Connections: 3 });
    const goaway = new Map<http2.ClientHttp2Session, Promise<void>>();
    for (let index = 0; index < 3; index++) {
      const session = await connect(server);
      sessions.push(session);
      goaway.set(session, new Promise((resolve) => session.once("goaway", () => resolve())));
      // Each one calls once, in order: the first is the one idle the longest.
      expect((await h2Request(session, { path: GET_CONNECTION, headers, body: getConnection })).code).toBe(0);
    }
    const fourth = await connect(server);
    sessions.push(fourth);
    await goaway.get(sessions[0] as http2.ClientHttp2Session);
    expect(server.portRefusals).toEqual(["connection_cap"]);
    // The newest connection and the others are served.
    for (const session of sessions.slice(1)) {
      expect((await h2Request(session, { path: GET_CONNECTION, headers, body: getConnection })).code).toBe(0);
    }
  });
});
