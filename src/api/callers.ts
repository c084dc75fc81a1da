// Who is calling: bearer tokens map to caller names. Only sha256 digests of tokens are kept, and a
// presented token is compared with every known digest in constant time, so neither the tokens nor
// the timing of a comparison tell anything about them.

import { createHash, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";

export const CALLER_NAMES = ["dashboard-bff", "api-gateway", "token-service", "provisioning"] as const;
export type CallerName = (typeof CALLER_NAMES)[number];

/** The tokens that stand for each caller in dev mode (no CALLERS_FILE). Never valid in production. */
export const DEV_TOKENS: Readonly<Record<CallerName, string>> = {
  "dashboard-bff": "dev-dashboard-bff",
  "api-gateway": "dev-api-gateway",
  "token-service": "dev-token-service",
  provisioning: "dev-provisioning",
};

interface KnownToken {
  readonly digest: Buffer;
  readonly caller: CallerName;
}

export class CallerAuthenticator {
  private constructor(private readonly tokens: readonly KnownToken[]) {}

  static fromDigests(digestsByCaller: Readonly<Record<string, readonly string[]>>): CallerAuthenticator {
    const tokens: KnownToken[] = [];
    for (const [caller, digests] of Object.entries(digestsByCaller)) {
      if (!isCallerName(caller)) {
        throw new Error(`unknown caller "${caller}"; expected one of ${CALLER_NAMES.join(", ")}`);
      }
      if (!Array.isArray(digests)) throw new Error(`caller "${caller}": expected an array of "sha256:<hex>" strings`);
      for (const entry of digests) {
        const match = typeof entry === "string" ? /^sha256:([0-9a-f]{64})$/i.exec(entry) : null;
        if (match?.[1] === undefined) throw new Error(`caller "${caller}": expected "sha256:<64 hex digits>"`);
        tokens.push({ digest: Buffer.from(match[1], "hex"), caller });
      }
    }
    return new CallerAuthenticator(tokens);
  }

  static fromFile(path: string): CallerAuthenticator {
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(path, "utf8"));
    } catch (error) {
      throw new Error(`CALLERS_FILE ${path}: ${(error as Error).message}`);
    }
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
      throw new Error(`CALLERS_FILE ${path}: expected {"<caller>": ["sha256:<hex>", ...]}`);
    }
    try {
      return CallerAuthenticator.fromDigests(parsed as Record<string, string[]>);
    } catch (error) {
      throw new Error(`CALLERS_FILE ${path}: ${(error as Error).message}`);
    }
  }

  static dev(): CallerAuthenticator {
    const digests: Record<string, string[]> = {};
    for (const caller of CALLER_NAMES) digests[caller] = [`sha256:${sha256Hex(DEV_TOKENS[caller])}`];
    return CallerAuthenticator.fromDigests(digests);
  }

  /** The caller that an `authorization` header value stands for, or undefined. */
  authenticate(authorization: string | undefined): CallerName | undefined {
    if (authorization === undefined || authorization.length > 4096) return undefined;
    const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization);
    if (match?.[1] === undefined) return undefined;
    const presented = createHash("sha256").update(match[1]).digest();
    let found: CallerName | undefined;
    for (const token of this.tokens) {
      // No early exit: every digest is compared whatever matched before.
      if (timingSafeEqual(presented, token.digest)) found = token.caller;
    }
    return found;
  }
}

export function sha256Hex(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}

function isCallerName(value: string): value is CallerName {
  return (CALLER_NAMES as readonly string[]).includes(value);
}
