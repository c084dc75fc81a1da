// The baseline: a @grpc/grpc-js server that answers CheckConnection with one fixed response and
// does nothing else (no auth, no logging, no database). Messages go through protobuf-es
// fromBinary/toBinary, as they would in a real grpc-js service on these types. Prints
// {"port": N} on stdout once it listens; stops on SIGTERM/SIGINT.

import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import { Connection_State } from "../gen/connections/v1/connection_pb.js";
import {
  type CheckConnectionRequest,
  CheckConnectionRequestSchema,
  type CheckConnectionResponse,
  CheckConnectionResponse_Reason,
  CheckConnectionResponseSchema,
} from "../gen/connections/v1/connection_service_pb.js";
import { CHECK_PATH } from "./workload.js";

// As large as a typical allowed answer of the service: the Connection is filled in.
const created = new Date("2026-01-05T10:00:00Z");
const response = create(CheckConnectionResponseSchema, {
  allowed: true,
  reason: CheckConnectionResponse_Reason.ALLOWED,
  state: Connection_State.ACTIVE,
  connection: {
    id: "cxn_Yk3v9QmX2r8TqLw0ZbN4aA",
    sourceOrganizationId: "org_bench_00042",
    destinationOrganizationId: "org_bench_01337",
    name: "org_bench_00042 to org_bench_01337",
    scopes: ["account.read", "transaction.read"],
    state: Connection_State.ACTIVE,
    createTime: timestampFromDate(created),
    updateTime: timestampFromDate(new Date("2026-01-06T10:00:00Z")),
    activateTime: timestampFromDate(new Date("2026-01-06T10:00:00Z")),
    creator: "user:usr_seed",
    etag: '"2"',
  },
});

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
  ) => callback(null, response),
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
