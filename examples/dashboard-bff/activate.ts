// A command-line consent, as the dashboard BFF gives it for the destination's user:
//   ADDR=http://127.0.0.1:8080 TOKEN=dev-dashboard-bff node activate.js <destination org id> <connection id> [etag]
// Without an etag it activates what it reads now; with one, only if the Connection still has it.
// Prints the outcome as JSON; exits 0 when activated, 1 when it changed meanwhile, 2 on an error.

import { ConnectError } from "@connectrpc/connect";
import { Connection_State } from "../../gen/connections/v1/connection_pb.js";
import { createDashboardClient, reasonOf } from "./client.js";

const [organizationId, connectionId, etag] = process.argv.slice(2);
if (organizationId === undefined || connectionId === undefined) {
  process.stderr.write("usage: activate <destination organization id> <connection id> [etag]\n");
  process.exit(2);
}
const dashboard = createDashboardClient({
  baseUrl: process.env.ADDR ?? "http://127.0.0.1:8080",
  token: process.env.TOKEN ?? "dev-dashboard-bff",
});
const actor = process.env.ACTOR ?? "user:example";
try {
  const shown = await dashboard.show(organizationId, actor, connectionId);
  const seen = etag === undefined ? shown : { ...shown, etag };
  const result = await dashboard.activate(organizationId, actor, seen);
  const connection = result.outcome === "activated" ? result.connection : result.current;
  process.stdout.write(
    `${JSON.stringify({
      outcome: result.outcome,
      state: connection === undefined ? undefined : `STATE_${Connection_State[connection.state]}`,
      etag: connection?.etag,
    })}\n`,
  );
  process.exitCode = result.outcome === "activated" ? 0 : 1;
} catch (error) {
  const failure = ConnectError.from(error);
  process.stderr.write(`activation failed: ${reasonOf(failure) || failure.message}\n`);
  process.exitCode = 2;
}
