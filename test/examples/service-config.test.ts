// The service config that callers copy from docs/API.md is the one the examples run with.

import { readFileSync } from "node:fs";
import { Code } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { retryPolicy, SERVICE_CONFIG } from "../../examples/retry-policy.js";

describe("the documented gRPC service config", () => {
  it("is the examples' service config", () => {
    const api = readFileSync(new URL("../../docs/API.md", import.meta.url), "utf8");
    const section = api.slice(api.indexOf("### Retrying: a service config to copy"));
    const block = /```json\n([\s\S]*?)\n```/.exec(section)?.[1];
    expect(block, "docs/API.md shows the service config in a json block").toBeDefined();
    expect(JSON.parse(block ?? "")).toEqual(SERVICE_CONFIG);
  });

  it("becomes the connect-es retry policy", () => {
    expect(retryPolicy()).toEqual({
      maxAttempts: 5,
      initialBackoffMs: 100,
      maxBackoffMs: 2000,
      backoffMultiplier: 2,
      retryableCodes: new Set([Code.Unavailable]),
    });
  });
});
