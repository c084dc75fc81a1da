// Who is calling. A caller is named by a bearer token, by the SPIFFE ID of a verified client
// certificate (mTLS), or by both, which must then agree. Only sha256 digests of tokens are kept,
// and a presented token is compared with every known digest in constant time, so neither the
// tokens nor the timing of a comparison tell anything about them.
//
// The table is immutable; the authenticator swaps a whole new one in on reload, and a call reads
// the table once, so a reload never changes the answer half-way through a call.
//
// Callers send the same token on every request, and hashing it each time was a measurable part of
// a cached check. So a table remembers the few tokens it has verified (and only those): failed
// guesses always take the full hash-and-compare path and can neither fill the memory nor evict a
// caller from it, and a reload starts from a new, empty table. Looking a presented token up among
// remembered ones goes through V8's per-process randomly seeded string hash, which an attacker
// cannot steer.

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

const CALLERS_FILE_SHAPE = `{"<caller>": ["sha256:<hex of token>", "spiffe://<trust domain>/<path>", ...], ...}`;
const TOKEN_DIGEST = /^sha256:([0-9a-f]{64})$/i;
// A SPIFFE ID: spiffe://<trust domain>/<path>, lower-case trust domain, no query or fragment.
const SPIFFE_ID = /^spiffe:\/\/[a-z0-9._-]+(\/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+$/;

/** Distinct verified tokens a table remembers; a service has a handful of callers. */
const VERIFIED_CAPACITY = 64;

interface KnownToken {
  readonly digest: Buffer;
  readonly caller: CallerName;
}

/** One validated callers file: who each token digest and each SPIFFE ID stands for. */
export class CallerTable {
  /** Token -> caller, for tokens that verified; oldest forgotten first. */
  readonly #verified = new Map<string, CallerName>();

  private constructor(
    readonly tokens: readonly KnownToken[],
    readonly spiffeIds: ReadonlyMap<string, CallerName>,
  ) {}

  /** Validates a parsed callers file; throws an Error naming the first problem (never a secret). */
  static fromEntries(entriesByCaller: unknown): CallerTable {
    if (typeof entriesByCaller !== "object" || entriesByCaller === null || Array.isArray(entriesByCaller)) {
      throw new Error(`expected ${CALLERS_FILE_SHAPE}`);
    }
    const tokens: KnownToken[] = [];
    const seenDigests = new Set<string>();
    const spiffeIds = new Map<string, CallerName>();
    for (const [caller, entries] of Object.entries(entriesByCaller)) {
      if (!isCallerName(caller)) {
        throw new Error(`unknown caller "${caller}"; expected one of ${CALLER_NAMES.join(", ")}`);
      }
      if (!Array.isArray(entries)) throw new Error(`caller "${caller}": expected an array of identities`);
      entries.forEach((entry: unknown, index) => {
        const where = `caller "${caller}", entry ${index}`;
        if (typeof entry !== "string") throw new Error(`${where}: expected a string`);
        const digest = TOKEN_DIGEST.exec(entry)?.[1]?.toLowerCase();
        if (digest !== undefined) {
          if (seenDigests.has(digest)) throw new Error(`${where}: this token digest is listed twice`);
          seenDigests.add(digest);
          tokens.push({ digest: Buffer.from(digest, "hex"), caller });
          return;
        }
        if (entry.startsWith("spiffe:")) {
          if (!SPIFFE_ID.test(entry)) throw new Error(`${where}: not a SPIFFE ID (spiffe://<trust domain>/<path>)`);
          const owner = spiffeIds.get(entry);
          if (owner !== undefined) throw new Error(`${where}: ${entry} is already listed for "${owner}"`);
          spiffeIds.set(entry, caller);
          return;
        }
        // The entry may be a token pasted by mistake: never echo it.
        throw new Error(`${where}: expected "sha256:<64 hex digits>" or "spiffe://<trust domain>/<path>"`);
      });
    }
    return new CallerTable(tokens, spiffeIds);
  }

  /** Reads and validates a callers file; the error names the file and the problem. */
  static fromFile(path: string): CallerTable {
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(path, "utf8"));
    } catch (error) {
      // JSON.parse quotes the offending text, which may be a secret: say only where it broke.
      const reason = error instanceof SyntaxError ? "not valid JSON" : (error as Error).message;
      throw new Error(`CALLERS_FILE ${path}: ${reason}`);
    }
    try {
      return CallerTable.fromEntries(parsed);
    } catch (error) {
      throw new Error(`CALLERS_FILE ${path}: ${(error as Error).message}`);
    }
  }

  static dev(): CallerTable {
    const entries: Record<string, string[]> = {};
    for (const caller of CALLER_NAMES) entries[caller] = [`sha256:${sha256Hex(DEV_TOKENS[caller])}`];
    return CallerTable.fromEntries(entries);
  }

  /** The caller that a bearer token stands for, or undefined. */
  callerOfToken(token: string): CallerName | undefined {
    const remembered = this.#verified.get(token);
    if (remembered !== undefined) return remembered;
    const found = this.#verify(token);
    if (found !== undefined) {
      if (this.#verified.size >= VERIFIED_CAPACITY) {
        const oldest = this.#verified.keys().next();
        if (oldest.done !== true) this.#verified.delete(oldest.value);
      }
      this.#verified.set(token, found);
    }
    return found;
  }

  #verify(token: string): CallerName | undefined {
    const presented = createHash("sha256").update(token).digest();
    let found: CallerName | undefined;
    for (const known of this.tokens) {
      // No early exit: every digest is compared whatever matched before.
      if (timingSafeEqual(presented, known.digest)) found = known.caller;
    }
    return found;
  }
}

export class CallerAuthenticator {
  #table: CallerTable;

  constructor(table: CallerTable) {
    this.#table = table;
  }

  static dev(): CallerAuthenticator {
    return new CallerAuthenticator(CallerTable.dev());
  }

  /** Puts a new table in force for every call that authenticates from now on. */
  replace(table: CallerTable): void {
    this.#table = table;
  }

  /**
   * The caller named by an `authorization` header value and/or the SPIFFE ID of a verified client
   * certificate, or undefined: a token that is not listed names nobody, and a token and a
   * certificate that both name a caller must name the same one. A certificate whose SPIFFE ID is
   * not listed names nobody, and leaves the token to decide.
   */
  authenticate(authorization: string | undefined, peerSpiffeId?: string): CallerName | undefined {
    const table = this.#table;
    const byCertificate = peerSpiffeId === undefined ? undefined : table.spiffeIds.get(peerSpiffeId);
    if (authorization === undefined) return byCertificate;
    if (authorization.length > 4096) return undefined;
    const token = /^Bearer\s+(\S+)\s*$/i.exec(authorization)?.[1];
    if (token === undefined) return undefined;
    const byToken = table.callerOfToken(token);
    if (byToken === undefined) return undefined;
    if (byCertificate !== undefined && byCertificate !== byToken) return undefined;
    return byToken;
  }
}

export function sha256Hex(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}

function isCallerName(value: string): value is CallerName {
  return (CALLER_NAMES as readonly string[]).includes(value);
}
