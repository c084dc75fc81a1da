// The baseline: a @grpc/grpc-js server that answers CheckConnection with one fixed response and
// does nothing else (no auth, no logging, no database). Messages go through protobuf-es
// fromBinary/toBinary, as they would in a real grpc-js service on these types. Prints
// {"port": N} on stdout once it listens; stops on SIGTERM/SIGINT.

import { fromBinary, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import {
  type CheckConnectionRequest,
  CheckConnectionRequestSchema,
  type CheckConnectionResponse,
  CheckConnectionResponseSchema,
} from "../gen/connections/v1/connection_service_pb.js";
import { CHECK_PATH, SAMPLE_CHECK_RESPONSE } from "./workload.js";

const service: grpc.ServiceDefinition = {
  CheckConnection: {
    path: CHECK_PATH,
    requestStream: false,
    responseStream: false,
    requestSerialize: (message: CheckConnectionRequest) => Buffer.from(toBinary(CheckConnectionRequestSchema, message)),
    requestDeserialize: (bytes: Buffer) => fromBinary(CheckConnectionRequestSchema, bytes),
    responseSerialize: (message: CheckConnectionResponse) =>
      Buffer.from(toBinary(CheckConnectionResponseSchema, message)),
    responseDeserialize: (bytes: Buffer) => fromBinary(CheckConnectionResponseSchema, bytes),
  },
};

const server = new grpc.Server();
server.addService(service, {
  CheckConnection: (
    _call: grpc.ServerUnaryCall<CheckConnectionRequest, CheckConnectionResponse>,
    callback: grpc.sendUnaryData<CheckConnectionResponse>,
  ) => callback(null, SAMPLE_CHECK_RESPONSE),
});
server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, port) => {
  if (error !== null) {
    process.stderr.write(`baseline: ${error.message}\n`);
    process.exit(1);
  }
  process.stdout.write(`${JSON.stringify({ port })}\n`);
});

const stop = () => {
  setTimeout(() => server.forceShutdown(), 2000).unref();
  server.tryShutdown(() => process.exit(0));
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
