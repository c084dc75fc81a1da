// A command-line check, as the token service makes it before issuing a share token:
//   ADDR=http://127.0.0.1:8080 TOKEN=dev-token-service node check.js <connection id> <organization id> <scope>
// Prints the decision as JSON; exits 0 when allowed, 1 when denied, 2 on an error.

import { ConnectError } from "@connectrpc/connect";
import { createTokenServiceClient } from "./client.js";

const [connectionId, organizationId, scope] = process.argv.slice(2);
if (connectionId === undefined || organizationId === undefined || scope === undefined) {
  process.stderr.write("usage: check <connection id> <organization id> <scope>\n");
  process.exit(2);
}
const client = createTokenServiceClient({
  baseUrl: process.env.ADDR ?? "http://127.0.0.1:8080",
  token: process.env.TOKEN ?? "dev-token-service",
  deadlineMs: Number(process.env.DEADLINE_MS ?? 5_000),
  maxAttempts: Number(process.env.MAX_ATTEMPTS ?? 8),
  onRetry: (attempt, error) => process.stderr.write(`attempt ${attempt}: ${error.message}; retrying\n`),
});
try {
  const decision = await client.mayIssue(connectionId, organizationId, scope);
  process.stdout.write(`${JSON.stringify(decision)}\n`);
  process.exitCode = decision.allowed ? 0 : 1;
} catch (error) {
  const failure = ConnectError.from(error);
  process.stderr.write(`check failed: ${failure.message}\n`);
  process.exitCode = 2;
}
