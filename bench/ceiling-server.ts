// The ceiling: node:http2 answering every stream with one fixed gRPC response (headers, the
// pre-framed CheckConnectionResponse the grpc-js baseline sends, and `grpc-status: 0` trailers)
// once the request has ended. No decoding, no routing, no work: what Node's HTTP/2 costs per unary
// call on this machine, and so the most any Node gRPC server could reach. Prints {"port": N} on
// stdout once it listens; stops on SIGTERM/SIGINT.

import http2 from "node:http2";
import { toBinary } from "@bufbuild/protobuf";
import { CheckConnectionResponseSchema } from "../gen/connections/v1/connection_service_pb.js";
import { SAMPLE_CHECK_RESPONSE } from "./workload.js";

const message = toBinary(CheckConnectionResponseSchema, SAMPLE_CHECK_RESPONSE);
const frame = Buffer.alloc(5 + message.length);
frame.writeUInt32BE(message.length, 1);
frame.set(message, 5);
const HEADERS = { ":status": 200, "content-type": "application/grpc" };
const TRAILERS = { "grpc-status": "0" };

function sendTrailers(this: http2.ServerHttp2Stream): void {
  this.sendTrailers(TRAILERS);
}

function answer(this: http2.ServerHttp2Stream): void {
  if (this.destroyed) return;
  this.respond(HEADERS, { waitForTrailers: true });
  this.once("wantTrailers", sendTrailers);
  this.end(frame);
}

const server = http2.createServer();
server.on("stream", (stream) => {
  stream.on("error", () => {});
  stream.on("end", answer);
  stream.resume();
});
server.listen(0, "127.0.0.1", () => {
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("no port");
  process.stdout.write(`${JSON.stringify({ port: address.port })}\n`);
});

const stop = () => {
  setTimeout(() => process.exit(0), 2000).unref();
  server.close(() => process.exit(0));
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
