// The rules of a Connection: its states, its transitions, who may see it and who may make them,
// what a change of scopes does to consent, and what a share token check answers. Pure: no I/O, no clock, no wire types, so every rule is tested on its own.

export type State = "PENDING" | "ACTIVE" | "INACTIVE";
export type Transition = "ACTIVATE" | "DEACTIVATE" | "REACTIVATE";
export type EventType = "CREATED" | "ACTIVATED" | "DEACTIVATED" | "REACTIVATED" | "UPDATED";
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

/** Why a transition is refused. */
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

export type Access<C> =
  | { readonly ok: true; readonly connection: C; readonly party: Party }
  | { readonly ok: false; readonly refusal: "CONNECTION_NOT_FOUND" };

/**
 * Whether an organization may see a Connection at all: only its parties may. A stranger is told
 * that it does not exist, exactly as if it did not, so that it learns nothing. Every rule that
 * acts for an organization starts here.
 */
export function accessOf<C extends Parties>(connection: C | undefined, organizationId: string): Access<C> {
  const party = connection === undefined ? undefined : partyOf(connection, organizationId);
  if (connection === undefined || party === undefined) return { ok: false, refusal: "CONNECTION_NOT_FOUND" };
  return { ok: true, connection, party };
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
  const access = accessOf(connection, organizationId);
  if (!access.ok) return access;
  const party = access.party;
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

/** How a new set of scopes compares with the granted one (both normalized). */
export type ScopeChange = "UNCHANGED" | "NARROWED" | "WIDENED";

export function scopeChange(granted: readonly string[], next: readonly string[]): ScopeChange {
  if (next.some((scope) => !granted.includes(scope))) return "WIDENED";
  return next.length === granted.length ? "UNCHANGED" : "NARROWED";
}

/**
 * The consent rule: the destination consented to the scopes it was shown, no more. Narrowing
 * needs no consent and applies in every state; widening sends an ACTIVE Connection back to
 * PENDING so that the destination consents to the new set, while a PENDING one still waits for
 * consent (now to the new set) and an INACTIVE one stays inactive until it is reactivated.
 */
export function stateAfterScopeChange(state: State, change: ScopeChange): State {
  return change === "WIDENED" && state === "ACTIVE" ? "PENDING" : state;
}

/** What an update asks for: the fields named in its mask (scopes already normalized). */
export interface UpdateRequest {
  readonly name?: string;
  readonly scopes?: readonly string[];
}

export type UpdateDecision =
  /** The update changes nothing: nothing is written or recorded. */
  | { readonly ok: true; readonly changed: false }
  | {
      readonly ok: true;
      readonly changed: true;
      readonly name: string;
      readonly scopes: readonly string[];
      readonly to: State;
    }
  | { readonly ok: false; readonly refusal: "CONNECTION_NOT_FOUND" | "ONLY_SOURCE_CAN_UPDATE" };

/**
 * Decides an update of a Connection's name and scopes by `organizationId`: strangers are told it
 * does not exist, only the source may change what it shares, and the consent rule decides the
 * state. A change of name alone never changes the state.
 */
export function decideUpdate(
  connection: Parties & { readonly state: State; readonly name: string; readonly scopes: readonly string[] },
  organizationId: string,
  request: UpdateRequest,
): UpdateDecision {
  const access = accessOf(connection, organizationId);
  if (!access.ok) return access;
  if (access.party !== "SOURCE") return { ok: false, refusal: "ONLY_SOURCE_CAN_UPDATE" };
  const name = request.name ?? connection.name;
  const scopes = request.scopes ?? connection.scopes;
  const change = scopeChange(connection.scopes, scopes);
  if (change === "UNCHANGED" && name === connection.name) return { ok: true, changed: false };
  return { ok: true, changed: true, name, scopes, to: stateAfterScopeChange(connection.state, change) };
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
