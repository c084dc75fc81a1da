// TLS and mTLS on the one port, with certificates made at test time: every protocol over TLS
// (gRPC via grpc-js and connect-node, Connect JSON over HTTP/1.1), no cleartext beside it, client
// certificates required and verified, a SPIFFE ID naming the caller, a token and a certificate
// that disagree refused, health and reflection over TLS, and credentials replaced without a
// restart.

import { execFile } from "node:child_process";
import { renameSync, writeFileSync } from "node:fs";
import https from "node:https";
import net from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import tls from "node:tls";
import { promisify } from "node:util";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CheckConnectionRequest_Action } from "../../gen/connections/v1/connection_service_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import { sha256Hex } from "../../src/api/callers.js";
import { spiffeIdOf } from "../../src/transport/tls.js";
import { createTestPki, type TestPki } from "../support/certificates.js";
import { testDatabases } from "../support/databases.js";
import {
  CLIENT_KINDS,
  Code,
  expectRpcError,
  GrpcJsRpcClient,
  type RpcClient,
  rpcError,
  startTestService,
  type TestService,
  tlsRpcClient,
  uniqueId,
} from "../support/service.js";
import { startTestServer } from "./harness.js";

const run = promisify(execFile);
const SQLITE = testDatabases.find((database) => database.kind === "sqlite-memory");
if (SQLITE === undefined) throw new Error("no in-memory SQLite test database");
const TRUST_DOMAIN = "spiffe://connections.test";
const TOKEN_SERVICE_ID = `${TRUST_DOMAIN}/ns/payments/sa/token-service`;
const GATEWAY_ID = `${TRUST_DOMAIN}/ns/edge/sa/api-gateway`;
const PROVISIONING_TOKEN = "provisioning-secret-token";

function serverCertificate(pki: TestPki, name = "server") {
  return pki.issue(name, { dns: ["localhost"], ips: ["127.0.0.1"] });
}

/** The CN of the certificate a new TLS connection to `port` is shown. */
function presentedCommonName(port: number, ca: Buffer, client?: { cert: Buffer; key: Buffer }): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: "127.0.0.1", port, ca, ALPNProtocols: ["h2"], ...client }, () => {
      const subject = socket.getPeerCertificate().subject;
      socket.destroy();
      resolve(String(subject?.CN));
    });
    socket.once("error", reject);
  });
}

describe("spiffeIdOf", () => {
  it("finds the one SPIFFE URI SAN, also when node quotes it, and refuses two", () => {
    expect(spiffeIdOf("DNS:localhost, URI:spiffe://td/a")).toBe("spiffe://td/a");
    expect(spiffeIdOf('URI:"spiffe://td/a,b", DNS:x')).toBe("spiffe://td/a,b");
    expect(spiffeIdOf("URI:https://example.com/x")).toBeUndefined();
    expect(spiffeIdOf("URI:spiffe://td/a, URI:spiffe://td/b")).toBeUndefined();
    expect(spiffeIdOf(undefined)).toBeUndefined();
  });
});

describe("TLS (server certificate only)", () => {
  let pki: TestPki;
  let service: TestService;

  beforeAll(async () => {
    pki = createTestPki();
    const server = serverCertificate(pki);
    service = await startTestService(SQLITE, { TLS_CERT_FILE: server.certFile, TLS_KEY_FILE: server.keyFile });
  }, 60_000);

  afterAll(async () => {
    await service?.close();
    pki?.remove();
  });

  describe.each(CLIENT_KINDS.map((kind) => ({ kind })))("via $kind", ({ kind }) => {
    it("serves RPCs over TLS with the dev tokens", async () => {
      const client = tlsRpcClient(kind, service.port, { ca: pki.ca.cert });
      try {
        const id = uniqueId("org");
        const { organization } = await client.as({ caller: "provisioning" }).createOrganization({ id, name: "TLS" });
        expect(organization?.id).toBe(id);
        await expectRpcError(
          client.as({ caller: null }).getOrganization({ id }),
          Code.Unauthenticated,
          "CALLER_UNAUTHENTICATED",
        );
      } finally {
        await client.close();
      }
    });
  });

  it("negotiates h2 and http/1.1 by ALPN and speaks Connect JSON over https", async () => {
    const agent = new https.Agent({ ALPNProtocols: ["http/1.1"], ca: pki.ca.cert, servername: "" });
    const body = await new Promise<{ status: number; alpn: string | false | null; text: string }>((resolve, reject) => {
      const request = https.request(
        {
          host: "127.0.0.1",
          port: service.port,
          method: "POST",
          path: "/connections.v1.OrganizationService/GetOrganization",
          ca: pki.ca.cert,
          agent,
          headers: { "content-type": "application/json", authorization: "Bearer dev-provisioning" },
        },
        (response) => {
          const alpn = (response.socket as tls.TLSSocket).alpnProtocol;
          let text = "";
          response.on("data", (chunk: Buffer) => {
            text += chunk.toString();
          });
          response.on("end", () => resolve({ status: response.statusCode ?? 0, alpn, text }));
        },
      );
      request.once("error", reject);
      request.end(JSON.stringify({ id: "org_absent" }));
    });
    agent.destroy();
    expect(body.alpn).toBe("http/1.1");
    expect(body.status).toBe(404);
    expect(JSON.parse(body.text)).toMatchObject({ code: "not_found" });
  });

  it("serves no cleartext on the port", async () => {
    const grpcJs = new GrpcJsRpcClient(service.address);
    try {
      const error = await rpcError(grpcJs.as({ caller: "provisioning" }).getOrganization({ id: "org_x" }));
      expect(Code[error.code]).toBe(Code[Code.Unavailable]);
    } finally {
      await grpcJs.close();
    }
    await expect(
      fetch(`http://${service.address}/connections.v1.OrganizationService/GetOrganization`),
    ).rejects.toThrow();
  });

  it("answers health and reflection over TLS without credentials", async () => {
    const sessionManager = new Http2SessionManager(`https://127.0.0.1:${service.port}`, undefined, { ca: pki.ca.cert });
    try {
      const health = createClient(
        Health,
        createGrpcTransport({ baseUrl: `https://127.0.0.1:${service.port}`, sessionManager }),
      );
      expect((await health.check({ service: "" })).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    } finally {
      sessionManager.abort();
    }
    const { stdout } = await run("npx", [
      "buf",
      "curl",
      "--cacert",
      pki.ca.certFile,
      "--list-methods",
      `https://127.0.0.1:${service.port}`,
    ]);
    expect(stdout).toContain("connections.v1.ConnectionService/CheckConnection");
  });
});

describe("mTLS (client certificates, SPIFFE IDs in the callers file)", () => {
  let pki: TestPki;
  let foreign: TestPki;
  let service: TestService;
  let callersFile: string;
  const clients: RpcClient[] = [];

  const identity = (name: string, uri?: string) => {
    const pem = pki.issue(name, uri === undefined ? {} : { uris: [uri] });
    return { cert: pem.cert, key: pem.key };
  };

  beforeAll(async () => {
    pki = createTestPki();
    foreign = pki.foreignCa();
    const server = serverCertificate(pki);
    callersFile = join(pki.directory, "callers.json");
    writeFileSync(
      callersFile,
      JSON.stringify({
        "token-service": [TOKEN_SERVICE_ID],
        "api-gateway": [GATEWAY_ID],
        provisioning: [`sha256:${sha256Hex(PROVISIONING_TOKEN)}`],
      }),
    );
    service = await startTestService(SQLITE, {
      TLS_CERT_FILE: server.certFile,
      TLS_KEY_FILE: server.keyFile,
      TLS_CLIENT_CA_FILE: pki.ca.certFile,
      CALLERS_FILE: callersFile,
    });
  }, 60_000);

  afterAll(async () => {
    for (const client of clients) await client.close();
    await service?.close();
    pki?.remove();
  });

  describe.each(CLIENT_KINDS.map((kind) => ({ kind })))("via $kind", ({ kind }) => {
    const client = (cert?: { cert: Buffer; key: Buffer }) => {
      const made = tlsRpcClient(kind, service.port, { ca: pki.ca.cert, ...cert });
      clients.push(made);
      return made;
    };
    const check = {
      connectionId: "cxn_absent",
      organizationId: "org_absent",
      action: CheckConnectionRequest_Action.ISSUE_SHARE_TOKEN,
      scope: "account.read",
    };

    it("names the caller by the certificate's SPIFFE ID, without a token", async () => {
      const tokenService = client(identity(`token-service-${kind}`, TOKEN_SERVICE_ID)).as({ caller: null });
      const answer = await tokenService.checkConnection(check);
      expect(answer.allowed).toBe(false);
      // Named token-service: the caller table applies to it.
      await expectRpcError(tokenService.getOrganization({ id: "org_x" }), Code.PermissionDenied, "CALLER_NOT_ALLOWED");
    });

    it("refuses a token and a certificate that name different callers", async () => {
      const session = client(identity(`gateway-${kind}`, GATEWAY_ID)).as({
        authorization: `Bearer ${PROVISIONING_TOKEN}`,
      });
      await expectRpcError(session.getOrganization({ id: "org_x" }), Code.Unauthenticated, "CALLER_UNAUTHENTICATED");
    });

    it("lets the token decide when the certificate's SPIFFE ID is not listed", async () => {
      const session = client(identity(`unlisted-${kind}`, `${TRUST_DOMAIN}/ns/other/sa/unlisted`)).as({
        authorization: `Bearer ${PROVISIONING_TOKEN}`,
      });
      await expectRpcError(session.getOrganization({ id: "org_absent" }), Code.NotFound, "ORGANIZATION_NOT_FOUND");
      // And without a token it names nobody.
      const anonymous = client(identity(`unlisted2-${kind}`, `${TRUST_DOMAIN}/ns/other/sa/unlisted`));
      await expectRpcError(
        anonymous.as({ caller: null }).checkConnection(check),
        Code.Unauthenticated,
        "CALLER_UNAUTHENTICATED",
      );
    });

    it("refuses a connection without a client certificate, or with one from another CA", async () => {
      // The handshake fails before any RPC: each client reports its own transport error (codes
      // differ by client), never an answer from the service.
      const refused = (error: { reason: string; domain: string; rawMessage: string }) => {
        expect({ reason: error.reason, domain: error.domain }, error.rawMessage).toEqual({ reason: "", domain: "" });
      };
      refused(await rpcError(client().as({ caller: "provisioning" }).getOrganization({ id: "x" })));
      const stranger = foreign.issue(`stranger-${kind}`, { uris: [TOKEN_SERVICE_ID] });
      refused(
        await rpcError(client({ cert: stranger.cert, key: stranger.key }).as({ caller: null }).checkConnection(check)),
      );
    });
  });

  it("counts each refused handshake at the port, but not a client that hangs up before its hello", async () => {
    const server = await startTestServer({}, undefined, { ...serverCertificate(pki), ca: pki.ca.cert });
    const withoutCertificate = () => {
      const socket = tls.connect({ host: "127.0.0.1", port: server.running.port, ca: pki.ca.cert });
      socket.on("error", () => {});
    };
    try {
      const hangUp = net.connect(server.running.port, "127.0.0.1");
      await new Promise((resolve) => hangUp.once("connect", resolve));
      hangUp.destroy();
      withoutCertificate();
      withoutCertificate();
      for (let attempt = 0; attempt < 200 && server.portRefusals.length < 2; attempt++) await sleep(25);
      // Time for a count that should not come (the hang-up) to arrive too.
      await sleep(300);
      expect(server.portRefusals).toEqual(["tls_handshake_failed", "tls_handshake_failed"]);
    } finally {
      await server.running.close(500);
    }
  });

  it("answers health over mTLS for a client with a certificate", async () => {
    const { cert, key } = identity("health-probe");
    const baseUrl = `https://127.0.0.1:${service.port}`;
    const sessionManager = new Http2SessionManager(baseUrl, undefined, { ca: pki.ca.cert, cert, key });
    try {
      const health = createClient(Health, createGrpcTransport({ baseUrl, sessionManager }));
      expect((await health.check({ service: "" })).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    } finally {
      sessionManager.abort();
    }
  });

  it("picks up a new server certificate without a restart; open connections keep working", async () => {
    const probe = identity("reload-probe", TOKEN_SERVICE_ID);
    const open = tlsRpcClient("connect-grpc", service.port, { ca: pki.ca.cert, ...probe });
    clients.push(open);
    const check = {
      connectionId: "cxn_absent",
      organizationId: "org_absent",
      action: CheckConnectionRequest_Action.ISSUE_SHARE_TOKEN,
      scope: "account.read",
    };
    await open.as({ caller: null }).checkConnection(check);
    expect(await presentedCommonName(service.port, pki.ca.cert, probe)).toBe("server");

    // Replaced the way a secret volume does it: new files renamed over the old ones.
    const next = serverCertificate(pki, "server-rotated");
    const server = serverCertificate(pki, "server-staging");
    writeFileSync(`${server.certFile}.new`, next.cert);
    writeFileSync(`${server.keyFile}.new`, next.key);
    const current = { certFile: join(pki.directory, "server.pem"), keyFile: join(pki.directory, "server.key") };
    renameSync(`${server.keyFile}.new`, current.keyFile);
    renameSync(`${server.certFile}.new`, current.certFile);

    let seen = "";
    for (let attempt = 0; attempt < 200 && seen !== "server-rotated"; attempt++) {
      seen = await presentedCommonName(service.port, pki.ca.cert, probe);
      if (seen !== "server-rotated") await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(seen).toBe("server-rotated");
    expect((await open.as({ caller: null }).checkConnection(check)).allowed).toBe(false);
  });
});
