// How the token service calls CheckConnection: over the gRPC protocol with connect-es
// (createGrpcTransport), a deadline on every call, and retries with exponential backoff and jitter
// when the service is UNAVAILABLE (a replica restarting or draining, the database briefly down).
// Only UNAVAILABLE is retried: a check is a read, so retrying it is always safe, and every other
// error is an answer that a retry would not change. The retries share the call's deadline.
//
// Following the change feed to revoke share tokens at once is feed.ts.

import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  CheckConnectionRequest_Action,
  CheckConnectionResponse_Reason,
  ConnectionService,
} from "../../gen/connections/v1/connection_service_pb.js";

export interface TokenServiceClientOptions {
  /** e.g. http://connections:8080 (h2c) or https://connections:8443 */
  readonly baseUrl: string;
  /** The token service's bearer token. */
  readonly token: string;
  /** Deadline of one check, retries included. */
  readonly deadlineMs?: number;
  /** Attempts in all, the first included. */
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

/** Retries unary calls that fail UNAVAILABLE, with full-jitter exponential backoff, within the deadline. */
export function retryUnavailable(
  maxAttempts: number,
  initialBackoffMs: number,
  maxBackoffMs: number,
  onRetry: (attempt: number, error: ConnectError) => void = () => {},
): Interceptor {
  return (next) => async (request) => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await next(request);
      } catch (error) {
        const failure = ConnectError.from(error);
        if (request.stream || failure.code !== Code.Unavailable || attempt >= maxAttempts) throw failure;
        onRetry(attempt, failure);
        const ceiling = Math.min(maxBackoffMs, initialBackoffMs * 2 ** (attempt - 1));
        // Aborts (and so throws) when the call's deadline passes during the wait.
        await sleep(Math.random() * ceiling, undefined, { signal: request.signal });
      }
    }
  };
}

export function createTokenServiceClient(options: TokenServiceClientOptions) {
  const transport = createGrpcTransport({
    baseUrl: options.baseUrl,
    interceptors: [
      retryUnavailable(
        options.maxAttempts ?? 5,
        options.initialBackoffMs ?? 50,
        options.maxBackoffMs ?? 1_000,
        options.onRetry,
      ),
    ],
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
