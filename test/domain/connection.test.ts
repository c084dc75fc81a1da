import { describe, expect, it } from "vitest";
import {
  type CheckAction,
  decideCheck,
  decideTransition,
  isSelfConnection,
  normalizeScopes,
  partyOf,
  type State,
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
