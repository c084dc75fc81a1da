// A container HEALTHCHECK: one grpc.health.v1.Health/Check to the service in the same container,
// over h2c, or over TLS when TLS_CERT_FILE is set (the port then serves TLS only). Exits 0 when the service reports SERVING, 1 otherwise (NOT_SERVING while the database
// does not answer or once shutdown began, no answer, a refused connection). Plain node:http2, so
// the image needs no extra tool (grpc_health_probe, curl) and it runs as `node dist/src/healthcheck.js`.

import { readFileSync } from "node:fs";
import http2 from "node:http2";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  HealthCheckRequestSchema,
  HealthCheckResponse_ServingStatus,
  HealthCheckResponseSchema,
} from "../../gen/grpc/health/v1/health_pb.js";

const TIMEOUT_MS = 3_000;

/** The address the service listens on, as seen from inside its container. */
function target(env: NodeJS.ProcessEnv): string {
  const host = env.HOST === undefined || env.HOST === "" || env.HOST === "0.0.0.0" ? "127.0.0.1" : env.HOST;
  const bracketed = host.includes(":") ? (host === "::" ? "[::1]" : `[${host}]`) : host;
  const scheme = env.TLS_CERT_FILE ? "https" : "http";
  return `${scheme}://${bracketed}:${env.PORT || "8080"}`;
}

/**
 * TLS options for asking our own process on loopback: its identity is not in question, so the
 * server certificate is not verified. Under mTLS the service's own certificate is presented as
 * the client certificate; that works when one CA (e.g. SPIRE's) issues both.
 */
function tlsOptions(env: NodeJS.ProcessEnv): http2.SecureClientSessionOptions {
  if (!env.TLS_CERT_FILE || !env.TLS_KEY_FILE) return {};
  const options: http2.SecureClientSessionOptions = { rejectUnauthorized: false };
  if (env.TLS_CLIENT_CA_FILE) {
    options.cert = readFileSync(env.TLS_CERT_FILE);
    options.key = readFileSync(env.TLS_KEY_FILE);
  }
  return options;
}

function checkHealth(
  authority: string,
  tls: http2.SecureClientSessionOptions,
  service = "",
): Promise<HealthCheckResponse_ServingStatus> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(authority, tls);
    const timer = setTimeout(() => {
      session.destroy();
      reject(new Error(`no answer from ${authority} in ${TIMEOUT_MS} ms`));
    }, TIMEOUT_MS);
    const fail = (error: Error) => {
      clearTimeout(timer);
      session.destroy();
      reject(error);
    };
    session.on("error", fail);
    const message = toBinary(HealthCheckRequestSchema, create(HealthCheckRequestSchema, { service }));
    const frame = Buffer.alloc(5 + message.length);
    frame.writeUInt32BE(message.length, 1);
    frame.set(message, 5);
    const stream = session.request({
      ":method": "POST",
      ":path": "/grpc.health.v1.Health/Check",
      "content-type": "application/grpc",
      te: "trailers",
    });
    const chunks: Buffer[] = [];
    let grpcStatus: string | undefined;
    stream.on("response", (headers) => {
      grpcStatus = headers["grpc-status"] as string | undefined;
    });
    stream.on("trailers", (trailers) => {
      grpcStatus = trailers["grpc-status"] as string | undefined;
    });
    stream.on("data", (chunk: Buffer) => chunks.push(chunk));
    stream.on("error", fail);
    stream.on("end", () => {
      clearTimeout(timer);
      session.close();
      const body = Buffer.concat(chunks);
      if (grpcStatus !== "0" || body.length < 5) {
        reject(new Error(`Health/Check failed with grpc-status ${grpcStatus ?? "(none)"}`));
        return;
      }
      resolve(fromBinary(HealthCheckResponseSchema, body.subarray(5, 5 + body.readUInt32BE(1))).status);
    });
    stream.end(frame);
  });
}

const authority = target(process.env);
checkHealth(authority, tlsOptions(process.env)).then(
  (status) => {
    process.stdout.write(`${authority}: ${HealthCheckResponse_ServingStatus[status] ?? status}\n`);
    process.exit(status === HealthCheckResponse_ServingStatus.SERVING ? 0 : 1);
  },
  (error: unknown) => {
    process.stdout.write(`${authority}: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  },
);
