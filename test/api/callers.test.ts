// The callers table on its own: what a callers file may hold, what it refuses (without echoing
// what might be a secret), and how a token and a client certificate's SPIFFE ID name a caller.

import { describe, expect, it } from "vitest";
import { CallerAuthenticator, CallerTable, sha256Hex } from "../../src/api/callers.js";

const GATEWAY_ID = "spiffe://corp.example/ns/edge/sa/api-gateway";
const TOKEN_SERVICE_ID = "spiffe://corp.example/ns/payments/sa/token-service";

function table(entries: unknown): CallerTable {
  return CallerTable.fromEntries(entries);
}

describe("CallerTable", () => {
  it("accepts token digests and SPIFFE IDs side by side", () => {
    const callers = table({
      "api-gateway": [`sha256:${sha256Hex("gateway-token")}`, GATEWAY_ID],
      "token-service": [TOKEN_SERVICE_ID],
    });
    expect(callers.callerOfToken("gateway-token")).toBe("api-gateway");
    expect(callers.spiffeIds.get(TOKEN_SERVICE_ID)).toBe("token-service");
  });

  it.each([
    ["not an object", ["sha256:00"], /expected \{/],
    ["an unknown caller", { intruder: [] }, /unknown caller "intruder"/],
    ["a list that is not an array", { provisioning: "sha256:00" }, /expected an array/],
    ["a short digest", { provisioning: ["sha256:abc"] }, /entry 0: expected "sha256:<64 hex digits>"/],
    ["a SPIFFE ID without a path", { provisioning: ["spiffe://corp.example"] }, /not a SPIFFE ID/],
    ["one SPIFFE ID for two callers", { provisioning: [GATEWAY_ID], "api-gateway": [GATEWAY_ID] }, /already listed/],
    [
      "one token for two callers",
      { provisioning: [`sha256:${"a".repeat(64)}`], "api-gateway": [`sha256:${"A".repeat(64)}`] },
      /listed twice/,
    ],
  ])("refuses %s", (_, entries, message) => {
    expect(() => table(entries)).toThrow(message);
  });

  it("never echoes an entry that may be a pasted token", () => {
    expect(() => table({ provisioning: ["the-raw-secret-token"] })).toThrow(
      expect.objectContaining({ message: expect.not.stringContaining("the-raw-secret-token") }),
    );
  });
});

describe("CallerAuthenticator", () => {
  const authenticator = new CallerAuthenticator(
    table({
      "api-gateway": [`sha256:${sha256Hex("gateway-token")}`, GATEWAY_ID],
      "token-service": [TOKEN_SERVICE_ID],
    }),
  );

  it("names the caller by token, by certificate, or by both when they agree", () => {
    expect(authenticator.authenticate("Bearer gateway-token")).toBe("api-gateway");
    expect(authenticator.authenticate(undefined, TOKEN_SERVICE_ID)).toBe("token-service");
    expect(authenticator.authenticate("Bearer gateway-token", GATEWAY_ID)).toBe("api-gateway");
  });

  it("refuses a token and a certificate that name different callers, and unknown tokens", () => {
    expect(authenticator.authenticate("Bearer gateway-token", TOKEN_SERVICE_ID)).toBeUndefined();
    expect(authenticator.authenticate("Bearer unknown", TOKEN_SERVICE_ID)).toBeUndefined();
    expect(authenticator.authenticate("Basic Z2F0ZXdheQ==", TOKEN_SERVICE_ID)).toBeUndefined();
    expect(authenticator.authenticate(undefined, "spiffe://corp.example/unlisted")).toBeUndefined();
  });

  it("lets the token decide when the certificate's SPIFFE ID is not listed", () => {
    expect(authenticator.authenticate("Bearer gateway-token", "spiffe://corp.example/unlisted")).toBe("api-gateway");
  });

  it("puts a replaced table in force at once", () => {
    const swapped = new CallerAuthenticator(table({ provisioning: [`sha256:${sha256Hex("a")}`] }));
    swapped.replace(table({ provisioning: [`sha256:${sha256Hex("b")}`] }));
    expect(swapped.authenticate("Bearer a")).toBeUndefined();
    expect(swapped.authenticate("Bearer b")).toBe("provisioning");
  });
});

describe("verified tokens remembered", () => {
  const tokens = Array.from({ length: 100 }, (_, index) => `token-${index}-${"x".repeat(index % 7)}`);
  const entries = {
    "token-service": tokens.slice(0, 90).map((token) => `sha256:${sha256Hex(token)}`),
    "api-gateway": tokens.slice(90).map((token) => `sha256:${sha256Hex(token)}`),
  };

  it("answers the same on the first and every later presentation of a header", () => {
    const authenticator = new CallerAuthenticator(table(entries));
    for (let pass = 0; pass < 3; pass++) {
      expect(authenticator.authenticate("Bearer token-1-x")).toBe("token-service");
      expect(authenticator.authenticate("bearer   token-95-xxxx ")).toBe("api-gateway");
      expect(authenticator.authenticate("Bearer token-1-xx")).toBeUndefined();
      expect(authenticator.authenticate("Bearer token-1-")).toBeUndefined();
      expect(authenticator.authenticate("Basic token-1-x")).toBeUndefined();
      expect(authenticator.authenticate(`Bearer ${"y".repeat(5000)}`)).toBeUndefined();
    }
  });

  it("keeps answering right when more distinct tokens verify than a table remembers", () => {
    const callers = table(entries);
    for (let pass = 0; pass < 2; pass++) {
      tokens.forEach((token, index) => {
        expect(callers.callerOfToken(token)).toBe(index < 90 ? "token-service" : "api-gateway");
        expect(callers.callerOfToken(`${token}!`)).toBeUndefined();
      });
    }
  });

  it("forgets them with the table: a replaced table decides from its own digests", () => {
    const authenticator = new CallerAuthenticator(table(entries));
    expect(authenticator.authenticate("Bearer token-1-x")).toBe("token-service");
    authenticator.replace(table({ provisioning: [`sha256:${sha256Hex("token-1-x")}`] }));
    expect(authenticator.authenticate("Bearer token-1-x")).toBe("provisioning");
    authenticator.replace(table({}));
    expect(authenticator.authenticate("Bearer token-1-x")).toBeUndefined();
  });
});
