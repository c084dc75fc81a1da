// The retry policy every caller of the service should use: the gRPC service config that
// docs/API.md shows (a test keeps the two equal). gRPC clients take it as it is (grpc-js
// "grpc.service_config", C-core grpc.service_config, grpc-go WithDefaultServiceConfig);
// connect-es has no service configs, so the interceptor below does the same:
// it retries the status codes the policy names, with exponential backoff and full jitter, within
// the call's deadline. Writes are safe to retry because every one carries a request_id: a retry
// of a write that already happened answers what it answered then.

import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";

export interface RetryPolicy {
  /** Attempts in all, the first included. */
  readonly maxAttempts: number;
  readonly initialBackoffMs: number;
  readonly maxBackoffMs: number;
  readonly backoffMultiplier: number;
  readonly retryableCodes: ReadonlySet<Code>;
}

/** The service config, as JSON.stringify would write it for a gRPC client. */
export const SERVICE_CONFIG = {
  methodConfig: [
    {
      name: [{ service: "connections.v1.ConnectionService" }, { service: "connections.v1.OrganizationService" }],
      timeout: "5s",
      retryPolicy: {
        maxAttempts: 5,
        initialBackoff: "0.1s",
        maxBackoff: "2s",
        backoffMultiplier: 2,
        retryableStatusCodes: ["UNAVAILABLE"],
      },
    },
  ],
} as const;

/** "0.1s" -> 100 */
function seconds(duration: string): number {
  return Number(duration.replace(/s$/, "")) * 1000;
}

/** The service config's retry policy, for connect-es. */
export function retryPolicy(): RetryPolicy {
  const policy = SERVICE_CONFIG.methodConfig[0].retryPolicy;
  // "UNAVAILABLE" -> Code.Unavailable
  const codes = policy.retryableStatusCodes.map(
    (name) => Code[(name.charAt(0) + name.slice(1).toLowerCase()) as keyof typeof Code],
  );
  return {
    maxAttempts: policy.maxAttempts,
    initialBackoffMs: seconds(policy.initialBackoff),
    maxBackoffMs: seconds(policy.maxBackoff),
    backoffMultiplier: policy.backoffMultiplier,
    retryableCodes: new Set(codes),
  };
}

/** Retries unary calls as `policy` says; `onRetry` is told before each retry (to log or count it). */
export function retrying(
  policy: RetryPolicy = retryPolicy(),
  onRetry: (attempt: number, error: ConnectError) => void = () => {},
): Interceptor {
  return (next) => async (request) => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await next(request);
      } catch (error) {
        const failure = ConnectError.from(error);
        if (request.stream || !policy.retryableCodes.has(failure.code) || attempt >= policy.maxAttempts) throw failure;
        onRetry(attempt, failure);
        const ceiling = Math.min(
          policy.maxBackoffMs,
          policy.initialBackoffMs * policy.backoffMultiplier ** (attempt - 1),
        );
        // Aborts (and so throws) when the call's deadline passes during the wait.
        await sleep(Math.random() * ceiling, undefined, { signal: request.signal });
      }
    }
  };
}
