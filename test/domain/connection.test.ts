// The pure domain rules: which transition each party may make from each state, who is a party,
// scope normalisation and self-connections, what a check decides and why, and what an update
// changes (its scopes, and the state a scope change leads to).

import { describe, expect, it } from "vitest";
import {
  accessOf,
  type CheckAction,
  decideCheck,
  decideTransition,
  decideUpdate,
  isSelfConnection,
  normalizeScopes,
  partyOf,
  type ScopeChange,
  type State,
  scopeChange,
  stateAfterScopeChange,
  type Transition,
  type TransitionDecision,
} from "../../src/domain/connection.js";

const SOURCE = "org_source";
const DESTINATION = "org_destination";
const STRANGER = "org_stranger";

function connection(state: State, scopes: string[] = ["account.read"]) {
  return { sourceOrganizationId: SOURCE, destinationOrganizationId: DESTINATION, state, scopes };
}

// The whole state machine as a table: every (state, transition, acting party) and its outcome.
const EXPECTED: Record<State, Record<Transition, Record<"source" | "destination" | "stranger", string>>> = {
  PENDING: {
    ACTIVATE: { source: "ONLY_DESTINATION_CAN_ACTIVATE", destination: "ACTIVE", stranger: "CONNECTION_NOT_FOUND" },
    DEACTIVATE: { source: "INACTIVE", destination: "INACTIVE", stranger: "CONNECTION_NOT_FOUND" },
    REACTIVATE: {
      source: "INVALID_STATE_TRANSITION",
      destination: "ONLY_SOURCE_CAN_REACTIVATE",
      stranger: "CONNECTION_NOT_FOUND",
    },
  },
  ACTIVE: {
    ACTIVATE: {
      source: "ONLY_DESTINATION_CAN_ACTIVATE",
      destination: "INVALID_STATE_TRANSITION",
      stranger: "CONNECTION_NOT_FOUND",
    },
    DEACTIVATE: { source: "INACTIVE", destination: "INACTIVE", stranger: "CONNECTION_NOT_FOUND" },
    REACTIVATE: {
      source: "INVALID_STATE_TRANSITION",
      destination: "ONLY_SOURCE_CAN_REACTIVATE",
      stranger: "CONNECTION_NOT_FOUND",
    },
  },
  INACTIVE: {
    ACTIVATE: {
      source: "ONLY_DESTINATION_CAN_ACTIVATE",
      destination: "INVALID_STATE_TRANSITION",
      stranger: "CONNECTION_NOT_FOUND",
    },
    DEACTIVATE: {
      source: "INVALID_STATE_TRANSITION",
      destination: "INVALID_STATE_TRANSITION",
      stranger: "CONNECTION_NOT_FOUND",
    },
    REACTIVATE: { source: "PENDING", destination: "ONLY_SOURCE_CAN_REACTIVATE", stranger: "CONNECTION_NOT_FOUND" },
  },
};

const ORGANIZATION = { source: SOURCE, destination: DESTINATION, stranger: STRANGER };
const EVENT: Record<Transition, string> = {
  ACTIVATE: "ACTIVATED",
  DEACTIVATE: "DEACTIVATED",
  REACTIVATE: "REACTIVATED",
};

function outcome(decision: TransitionDecision): string {
  return decision.ok ? decision.to : decision.refusal;
}

describe("decideTransition", () => {
  const cases = Object.entries(EXPECTED).flatMap(([state, byTransition]) =>
    Object.entries(byTransition).flatMap(([transition, byParty]) =>
      Object.entries(byParty).map(([party, expected]) => ({ state, transition, party, expected })),
    ),
  );

  it("covers all 27 (state, transition, party) triples", () => {
    expect(cases).toHaveLength(27);
  });

  it.each(cases)("$party $transition from $state -> $expected", ({ state, transition, party, expected }) => {
    const decision = decideTransition(
      connection(state as State),
      transition as Transition,
      ORGANIZATION[party as keyof typeof ORGANIZATION],
    );
    expect(outcome(decision)).toBe(expected);
    if (decision.ok) expect(decision.event).toBe(EVENT[transition as Transition]);
  });
});

describe("partyOf", () => {
  it("names the side an organization is on", () => {
    expect(partyOf(connection("PENDING"), SOURCE)).toBe("SOURCE");
    expect(partyOf(connection("PENDING"), DESTINATION)).toBe("DESTINATION");
    expect(partyOf(connection("PENDING"), STRANGER)).toBeUndefined();
  });
});

describe("normalizeScopes", () => {
  it("folds duplicates and sorts", () => {
    expect(normalizeScopes(["transaction.read", "account.read", "transaction.read"])).toEqual({
      ok: true,
      scopes: ["account.read", "transaction.read"],
    });
  });

  it("refuses an empty list", () => {
    expect(normalizeScopes([])).toEqual({ ok: false, refusal: "NO_SCOPES" });
  });

  it("refuses a scope outside the catalogue and names it", () => {
    expect(normalizeScopes(["account.read", "account.write"])).toEqual({
      ok: false,
      refusal: "UNKNOWN_SCOPE",
      scope: "account.write",
    });
  });
});

describe("isSelfConnection", () => {
  it("is true only for the same organization on both ends", () => {
    expect(isSelfConnection(SOURCE, SOURCE)).toBe(true);
    expect(isSelfConnection(SOURCE, DESTINATION)).toBe(false);
  });
});

describe("decideCheck", () => {
  const issue: CheckAction = "ISSUE_SHARE_TOKEN";
  const redeem: CheckAction = "REDEEM_SHARE_TOKEN";

  it("allows the source to issue and the destination to redeem a granted scope while ACTIVE", () => {
    expect(decideCheck(connection("ACTIVE"), SOURCE, issue, "account.read")).toEqual({
      allowed: true,
      reason: "ALLOWED",
      isParty: true,
    });
    expect(decideCheck(connection("ACTIVE"), DESTINATION, redeem, "account.read")).toEqual({
      allowed: true,
      reason: "ALLOWED",
      isParty: true,
    });
  });

  it("answers CONNECTION_NOT_FOUND first", () => {
    expect(decideCheck(undefined, SOURCE, issue, "account.read")).toEqual({
      allowed: false,
      reason: "CONNECTION_NOT_FOUND",
      isParty: false,
    });
  });

  it("answers WRONG_ORGANIZATION for the other party and for a stranger, before the state", () => {
    expect(decideCheck(connection("INACTIVE"), DESTINATION, issue, "inquiry.read")).toEqual({
      allowed: false,
      reason: "WRONG_ORGANIZATION",
      isParty: true,
    });
    expect(decideCheck(connection("INACTIVE"), SOURCE, redeem, "inquiry.read")).toEqual({
      allowed: false,
      reason: "WRONG_ORGANIZATION",
      isParty: true,
    });
    expect(decideCheck(connection("ACTIVE"), STRANGER, issue, "account.read")).toEqual({
      allowed: false,
      reason: "WRONG_ORGANIZATION",
      isParty: false,
    });
  });

  it.each<State>(["PENDING", "INACTIVE"])("answers NOT_ACTIVE in %s before the scope", (state) => {
    expect(decideCheck(connection(state), SOURCE, issue, "inquiry.read")).toEqual({
      allowed: false,
      reason: "NOT_ACTIVE",
      isParty: true,
    });
  });

  it("answers SCOPE_NOT_GRANTED last", () => {
    expect(decideCheck(connection("ACTIVE"), DESTINATION, redeem, "inquiry.read")).toEqual({
      allowed: false,
      reason: "SCOPE_NOT_GRANTED",
      isParty: true,
    });
  });
});

describe("accessOf", () => {
  it("lets the parties see a Connection and tells a stranger it does not exist", () => {
    const seen = connection("PENDING");
    expect(accessOf(seen, SOURCE)).toEqual({ ok: true, connection: seen, party: "SOURCE" });
    expect(accessOf(seen, DESTINATION)).toEqual({ ok: true, connection: seen, party: "DESTINATION" });
    expect(accessOf(seen, STRANGER)).toEqual({ ok: false, refusal: "CONNECTION_NOT_FOUND" });
    expect(accessOf(undefined, SOURCE)).toEqual({ ok: false, refusal: "CONNECTION_NOT_FOUND" });
  });
});

describe("scopeChange", () => {
  it.each<[string[], string[], ScopeChange]>([
    [["account.read"], ["account.read"], "UNCHANGED"],
    [["account.read", "inquiry.read"], ["account.read"], "NARROWED"],
    [["account.read"], ["account.read", "inquiry.read"], "WIDENED"],
    // One scope removed and another added: something not consented to is asked for.
    [["account.read", "inquiry.read"], ["account.read", "transaction.read"], "WIDENED"],
    [["account.read"], ["inquiry.read"], "WIDENED"],
  ])("%j -> %j is %s", (granted, next, expected) => {
    expect(scopeChange(granted, next)).toBe(expected);
  });
});

// The consent rule as a table: the state after a change of scopes, for every state.
const CONSENT: Record<State, Record<ScopeChange, State>> = {
  PENDING: { UNCHANGED: "PENDING", NARROWED: "PENDING", WIDENED: "PENDING" },
  ACTIVE: { UNCHANGED: "ACTIVE", NARROWED: "ACTIVE", WIDENED: "PENDING" },
  INACTIVE: { UNCHANGED: "INACTIVE", NARROWED: "INACTIVE", WIDENED: "INACTIVE" },
};

describe("stateAfterScopeChange", () => {
  const cases = Object.entries(CONSENT).flatMap(([state, byChange]) =>
    Object.entries(byChange).map(([change, expected]) => ({ state, change, expected })),
  );

  it("covers all 9 (state, change) pairs", () => {
    expect(cases).toHaveLength(9);
  });

  it.each(cases)("$change scopes in $state -> $expected", ({ state, change, expected }) => {
    expect(stateAfterScopeChange(state as State, change as ScopeChange)).toBe(expected);
  });
});

describe("decideUpdate", () => {
  const granted = ["account.read", "inquiry.read"];
  const named = (state: State) => ({ ...connection(state, granted), name: "Sharing" });

  // Every state, every party, and the kinds of request: the outcome as "to-state" or the refusal.
  const REQUESTS = {
    "name only": { name: "Renamed" },
    "same name": { name: "Sharing" },
    "same scopes": { scopes: granted },
    narrowed: { scopes: ["account.read"] },
    widened: { scopes: [...granted, "transaction.read"] },
    "narrowed and renamed": { name: "Renamed", scopes: ["inquiry.read"] },
    "widened and renamed": { name: "Renamed", scopes: ["verification.read"] },
  } as const;
  const EXPECTED: Record<keyof typeof REQUESTS, Record<State, string>> = {
    "name only": { PENDING: "PENDING", ACTIVE: "ACTIVE", INACTIVE: "INACTIVE" },
    "same name": { PENDING: "unchanged", ACTIVE: "unchanged", INACTIVE: "unchanged" },
    "same scopes": { PENDING: "unchanged", ACTIVE: "unchanged", INACTIVE: "unchanged" },
    narrowed: { PENDING: "PENDING", ACTIVE: "ACTIVE", INACTIVE: "INACTIVE" },
    widened: { PENDING: "PENDING", ACTIVE: "PENDING", INACTIVE: "INACTIVE" },
    "narrowed and renamed": { PENDING: "PENDING", ACTIVE: "ACTIVE", INACTIVE: "INACTIVE" },
    "widened and renamed": { PENDING: "PENDING", ACTIVE: "PENDING", INACTIVE: "INACTIVE" },
  };
  const cases = Object.entries(EXPECTED).flatMap(([request, byState]) =>
    Object.entries(byState).map(([state, expected]) => ({ request, state, expected })),
  );

  it.each(cases)("source, $request in $state -> $expected", ({ request, state, expected }) => {
    const asked = REQUESTS[request as keyof typeof REQUESTS];
    const decision = decideUpdate(named(state as State), SOURCE, asked);
    if (!decision.ok) throw new Error(`refused: ${decision.refusal}`);
    expect(decision.changed ? decision.to : "unchanged").toBe(expected);
    if (decision.changed) {
      expect(decision.name).toBe("name" in asked ? asked.name : "Sharing");
      expect(decision.scopes).toEqual("scopes" in asked ? asked.scopes : granted);
    }
  });

  it.each<State>(["PENDING", "ACTIVE", "INACTIVE"])("only the source may update, in %s", (state) => {
    for (const request of Object.values(REQUESTS)) {
      expect(decideUpdate(named(state), DESTINATION, request)).toEqual({
        ok: false,
        refusal: "ONLY_SOURCE_CAN_UPDATE",
      });
      expect(decideUpdate(named(state), STRANGER, request)).toEqual({ ok: false, refusal: "CONNECTION_NOT_FOUND" });
    }
  });
});
