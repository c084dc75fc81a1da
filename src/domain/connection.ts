// The rules of a Connection: its states, its transitions, who may make them and what a share
// token check answers. Pure: no I/O, no clock, no wire types, so every rule is tested on its own.

export type State = "PENDING" | "ACTIVE" | "INACTIVE";
export type Transition = "ACTIVATE" | "DEACTIVATE" | "REACTIVATE";
export type EventType = "CREATED" | "ACTIVATED" | "DEACTIVATED" | "REACTIVATED";
export type Party = "SOURCE" | "DESTINATION";
export type CheckAction = "ISSUE_SHARE_TOKEN" | "REDEEM_SHARE_TOKEN";
export type CheckReason =
  | "ALLOWED"
  | "CONNECTION_NOT_FOUND"
  | "WRONG_ORGANIZATION"
  | "NOT_ACTIVE"
  | "SCOPE_NOT_GRANTED";

/** The types of data that a Connection may share. */
export const SCOPE_CATALOGUE: ReadonlySet<string> = new Set([
  "account.read",
  "inquiry.read",
  "transaction.read",
  "verification.read",
]);

/** The parties of a Connection: all that the rules need to know about it. */
export interface Parties {
  readonly sourceOrganizationId: string;
  readonly destinationOrganizationId: string;
}

interface TransitionRule {
  readonly from: readonly State[];
  readonly to: State;
  readonly allowedParties: readonly Party[];
  readonly event: EventType;
}

const TRANSITIONS: Readonly<Record<Transition, TransitionRule>> = {
  ACTIVATE: { from: ["PENDING"], to: "ACTIVE", allowedParties: ["DESTINATION"], event: "ACTIVATED" },
  DEACTIVATE: {
    from: ["PENDING", "ACTIVE"],
    to: "INACTIVE",
    allowedParties: ["SOURCE", "DESTINATION"],
    event: "DEACTIVATED",
  },
  REACTIVATE: { from: ["INACTIVE"], to: "PENDING", allowedParties: ["SOURCE"], event: "REACTIVATED" },
};

/** Why a transition is refused. A stranger is told the Connection does not exist. */
export type TransitionRefusal =
  | "CONNECTION_NOT_FOUND"
  | "ONLY_DESTINATION_CAN_ACTIVATE"
  | "ONLY_SOURCE_CAN_REACTIVATE"
  | "INVALID_STATE_TRANSITION";

export type TransitionDecision =
  | { readonly ok: true; readonly to: State; readonly event: EventType }
  | { readonly ok: false; readonly refusal: TransitionRefusal };

/** The side an organization is on, or undefined for a stranger. */
export function partyOf(connection: Parties, organizationId: string): Party | undefined {
  if (connection.sourceOrganizationId === organizationId) return "SOURCE";
  if (connection.destinationOrganizationId === organizationId) return "DESTINATION";
  return undefined;
}

/**
 * Decides whether `organizationId` may make `transition` on a Connection in `state`.
 * Strangers first (they must learn nothing), then who may act, then whether the state allows it.
 */
export function decideTransition(
  connection: Parties & { readonly state: State },
  transition: Transition,
  organizationId: string,
): TransitionDecision {
  const party = partyOf(connection, organizationId);
  if (party === undefined) return { ok: false, refusal: "CONNECTION_NOT_FOUND" };
  const rule = TRANSITIONS[transition];
  if (!rule.allowedParties.includes(party)) {
    return {
      ok: false,
      refusal: transition === "ACTIVATE" ? "ONLY_DESTINATION_CAN_ACTIVATE" : "ONLY_SOURCE_CAN_REACTIVATE",
    };
  }
  if (!rule.from.includes(connection.state)) return { ok: false, refusal: "INVALID_STATE_TRANSITION" };
  return { ok: true, to: rule.to, event: rule.event };
}

export type ScopesDecision =
  | { readonly ok: true; readonly scopes: string[] }
  | { readonly ok: false; readonly refusal: "UNKNOWN_SCOPE" | "NO_SCOPES"; readonly scope?: string };

/** Folds duplicates and sorts, so that equal sets of scopes compare equal. */
export function normalizeScopes(scopes: readonly string[]): ScopesDecision {
  if (scopes.length === 0) return { ok: false, refusal: "NO_SCOPES" };
  for (const scope of scopes) {
    if (!SCOPE_CATALOGUE.has(scope)) return { ok: false, refusal: "UNKNOWN_SCOPE", scope };
  }
  return { ok: true, scopes: [...new Set(scopes)].sort() };
}

/** A source may not connect to itself. */
export function isSelfConnection(sourceOrganizationId: string, destinationOrganizationId: string): boolean {
  return sourceOrganizationId === destinationOrganizationId;
}

const PARTY_FOR_ACTION: Readonly<Record<CheckAction, Party>> = {
  ISSUE_SHARE_TOKEN: "SOURCE",
  REDEEM_SHARE_TOKEN: "DESTINATION",
};

export interface CheckDecision {
  readonly allowed: boolean;
  readonly reason: CheckReason;
  /** Whether the organization may see the Connection (it is a party to it). */
  readonly isParty: boolean;
}

/**
 * The answer to "may this organization issue/redeem a share token through this Connection for
 * this scope?", with the reasons decided in the contract's order.
 */
export function decideCheck(
  connection: (Parties & { readonly state: State; readonly scopes: readonly string[] }) | undefined,
  organizationId: string,
  action: CheckAction,
  scope: string,
): CheckDecision {
  if (connection === undefined) return { allowed: false, reason: "CONNECTION_NOT_FOUND", isParty: false };
  const party = partyOf(connection, organizationId);
  const isParty = party !== undefined;
  if (party !== PARTY_FOR_ACTION[action]) return { allowed: false, reason: "WRONG_ORGANIZATION", isParty };
  if (connection.state !== "ACTIVE") return { allowed: false, reason: "NOT_ACTIVE", isParty };
  if (!connection.scopes.includes(scope)) return { allowed: false, reason: "SCOPE_NOT_GRANTED", isParty };
  return { allowed: true, reason: "ALLOWED", isParty };
}
