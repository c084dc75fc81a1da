// How the token service calls CheckConnection: over the gRPC protocol with connect-es
// (createGrpcTransport), a deadline on every call, and the service config's retry policy
// (../retry-policy.ts): UNAVAILABLE (a replica restarting or draining, the database briefly down)
// is retried with exponential backoff and jitter. A check is a read, so retrying it is always safe,
// and every other error is an answer that a retry would not change. The retries share the call's
// deadline.
//
// Following the change feed to revoke share tokens at once is feed.ts.

import { type ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  CheckConnectionRequest_Action,
  CheckConnectionResponse_Reason,
  ConnectionService,
} from "../../gen/connections/v1/connection_service_pb.js";
import { type RetryPolicy, retrying, retryPolicy } from "../retry-policy.js";

export interface TokenServiceClientOptions {
  /** e.g. http://connections:8080 (h2c) or https://connections:8443 */
  readonly baseUrl: string;
  /** The token service's bearer token. */
  readonly token: string;
  /** Deadline of one check, retries included. */
  readonly deadlineMs?: number;
  /** Overrides of the service config's retry policy: attempts in all, the first included. */
  readonly maxAttempts?: number;
  readonly initialBackoffMs?: number;
  readonly maxBackoffMs?: number;
  /** Told before each retry, e.g. to log or count it. */
  readonly onRetry?: (attempt: number, error: ConnectError) => void;
}

export interface Decision {
  readonly allowed: boolean;
  /** REASON_ALLOWED, REASON_NOT_ACTIVE, ... */
  readonly reason: string;
}

export function createTokenServiceClient(options: TokenServiceClientOptions) {
  const transport = createGrpcTransport({
    baseUrl: options.baseUrl,
    interceptors: [retrying({ ...retryPolicy(), ...definedOnly(options) }, options.onRetry)],
  });
  const client = createClient(ConnectionService, transport);
  const headers = { authorization: `Bearer ${options.token}` };
  const timeoutMs = options.deadlineMs ?? 2_000;

  async function check(
    action: CheckConnectionRequest_Action,
    connectionId: string,
    organizationId: string,
    scope: string,
  ): Promise<Decision> {
    const answer = await client.checkConnection(
      { connectionId, organizationId, action, scope },
      { headers, timeoutMs },
    );
    return { allowed: answer.allowed, reason: `REASON_${CheckConnectionResponse_Reason[answer.reason]}` };
  }

  return {
    /** May `organizationId` (the source) issue a share token for `scope` through this Connection? */
    mayIssue: (connectionId: string, organizationId: string, scope: string) =>
      check(CheckConnectionRequest_Action.ISSUE_SHARE_TOKEN, connectionId, organizationId, scope),
    /** May `organizationId` (the destination) redeem a share token for `scope`? */
    mayRedeem: (connectionId: string, organizationId: string, scope: string) =>
      check(CheckConnectionRequest_Action.REDEEM_SHARE_TOKEN, connectionId, organizationId, scope),
  };
}

/** The retry policy fields that `options` sets. */
function definedOnly(options: TokenServiceClientOptions): Partial<RetryPolicy> {
  const { maxAttempts, initialBackoffMs, maxBackoffMs } = options;
  return Object.fromEntries(
    Object.entries({ maxAttempts, initialBackoffMs, maxBackoffMs }).filter(([, value]) => value !== undefined),
  );
}
