// Use cases of Connections: each reads through the store, asks the domain, and writes back.
// Input here is already well-formed (src/api validates the wire); the rules live in the domain.

import {
  type CheckAction,
  type CheckDecision,
  decideCheck,
  decideTransition,
  isSelfConnection,
  normalizeScopes,
  type State,
  type Transition,
} from "../domain/connection.js";
import {
  AlreadyExistsError,
  type ConnectionRecord,
  type Direction,
  type EventRecord,
  type Store,
} from "../store/store.js";
import { invalidArgument, ServiceError } from "./errors.js";
import { newId } from "./ids.js";
import { decodePageToken, encodePageToken, pageSize } from "./paging.js";

/** Who is acting, as established by the API layer from the caller's credentials and headers. */
export interface Actor {
  readonly organizationId: string;
  readonly caller: string;
  /** The x-actor header, or "". */
  readonly actor: string;
  readonly requestId: string;
  /** The call's cancellation: writes made for this actor roll back once it aborts. */
  readonly signal?: AbortSignal;
}

export interface NewConnection {
  readonly destinationOrganizationId: string;
  readonly scopes: readonly string[];
  readonly name: string;
  /** Idempotency key, or "". */
  readonly requestId: string;
}

export interface PageRequest {
  readonly pageSize: number;
  readonly pageToken: string;
}

export interface ConnectionPage {
  readonly connections: ConnectionRecord[];
  readonly nextPageToken: string;
}

export interface EventPage {
  readonly events: EventRecord[];
  readonly nextPageToken: string;
}

export interface CheckResult {
  readonly decision: CheckDecision;
  /** Only for a party to the Connection. */
  readonly connection: ConnectionRecord | undefined;
}

/** How often a transition that lost a race re-reads and decides again before giving up. */
const TRANSITION_ATTEMPTS = 5;

export function etagOf(connection: ConnectionRecord): string {
  return `"${connection.version}"`;
}

export class Connections {
  constructor(
    private readonly store: Store,
    private readonly now: () => Date = () => new Date(),
  ) {}

  async create(actor: Actor, input: NewConnection): Promise<ConnectionRecord> {
    const source = actor.organizationId;
    if (isSelfConnection(source, input.destinationOrganizationId)) {
      throw new ServiceError("SELF_CONNECTION", "an organization cannot connect to itself", {
        field: "destination_organization_id",
      });
    }
    const scopes = normalizeScopes(input.scopes);
    if (!scopes.ok) {
      if (scopes.refusal === "NO_SCOPES") throw invalidArgument("scopes", "name at least one scope");
      throw new ServiceError("UNKNOWN_SCOPE", `scope "${scopes.scope}" is not in the catalogue`, {
        field: "scopes",
        scope: scopes.scope ?? "",
      });
    }
    const wanted = { ...input, scopes: scopes.scopes };
    if (input.requestId !== "") {
      const earlier = await this.store.findConnectionByRequestId(source, input.requestId);
      if (earlier !== undefined) return replay(earlier, wanted);
    }
    if (!(await this.store.organizationExists(input.destinationOrganizationId))) {
      throw new ServiceError(
        "ORGANIZATION_NOT_FOUND",
        `destination organization "${input.destinationOrganizationId}" is not registered`,
        { field: "destination_organization_id" },
      );
    }

    const now = this.now();
    const connection: ConnectionRecord = {
      id: newId("cxn"),
      sourceOrganizationId: source,
      destinationOrganizationId: input.destinationOrganizationId,
      name: input.name,
      scopes: scopes.scopes,
      state: "PENDING",
      createTime: now,
      updateTime: now,
      activateTime: undefined,
      deactivateTime: undefined,
      creator: actor.actor,
      createRequestId: input.requestId,
      version: 1,
    };
    try {
      await this.store.createConnection(
        connection,
        this.event(actor, connection, "CREATED", undefined, ""),
        actor.signal,
      );
      return connection;
    } catch (error) {
      if (!(error instanceof AlreadyExistsError)) throw error;
      // A concurrent create won the race: answer as if it had come first.
      if (error.conflict === "request_id") {
        const earlier = await this.store.findConnectionByRequestId(source, input.requestId);
        if (earlier !== undefined) return replay(earlier, wanted);
      }
      const existing = await this.store.findConnectionByPair(source, input.destinationOrganizationId);
      throw new ServiceError(
        "CONNECTION_ALREADY_EXISTS",
        `a connection from "${source}" to "${input.destinationOrganizationId}" already exists`,
        { connection_id: existing?.id ?? "" },
      );
    }
  }

  /** A Connection the organization is a party to; strangers are told it does not exist. */
  async get(organizationId: string, id: string): Promise<ConnectionRecord> {
    const connection = await this.store.getConnection(id);
    if (
      connection === undefined ||
      (connection.sourceOrganizationId !== organizationId && connection.destinationOrganizationId !== organizationId)
    ) {
      throw connectionNotFound(id);
    }
    return connection;
  }

  async list(
    organizationId: string,
    filters: { readonly direction: Direction; readonly states: readonly State[] },
    page: PageRequest,
  ): Promise<ConnectionPage> {
    const states = [...new Set(filters.states)].sort();
    const boundTo = ["connections", organizationId, filters.direction, states];
    const limit = pageSize(page.pageSize);
    const result = await this.store.listConnections({
      organizationId,
      direction: filters.direction,
      states,
      before: decodePageToken(page.pageToken, boundTo),
      limit,
    });
    return {
      connections: result.items,
      nextPageToken: result.nextCursor === undefined ? "" : encodePageToken(result.nextCursor, boundTo),
    };
  }

  async transition(
    actor: Actor,
    id: string,
    transition: Transition,
    options: { readonly etag: string; readonly reason: string },
  ): Promise<ConnectionRecord> {
    for (let attempt = 1; ; attempt++) {
      const current = await this.store.getConnection(id);
      if (current === undefined) throw connectionNotFound(id);
      const decision = decideTransition(current, transition, actor.organizationId);
      if (!decision.ok && decision.refusal !== "INVALID_STATE_TRANSITION") throw refusalError(decision.refusal, id);
      if (options.etag !== "" && options.etag !== etagOf(current)) throw etagMismatch(id);
      if (!decision.ok) {
        throw new ServiceError(
          "INVALID_STATE_TRANSITION",
          `cannot ${transition.toLowerCase()} connection "${id}" in state ${current.state}`,
          { state: `STATE_${current.state}` },
        );
      }

      const now = this.now();
      const next: ConnectionRecord = {
        ...current,
        state: decision.to,
        updateTime: now,
        activateTime: decision.to === "ACTIVE" ? now : current.activateTime,
        deactivateTime: decision.to === "INACTIVE" ? now : current.deactivateTime,
        version: current.version + 1,
      };
      const event = this.event(actor, next, decision.event, current.state, options.reason);
      if (await this.store.saveTransition(next, event, actor.signal)) return next;
      // Someone else changed it between our read and our write.
      if (options.etag !== "") throw etagMismatch(id);
      if (attempt === TRANSITION_ATTEMPTS) {
        throw new ServiceError("WRITE_CONFLICT", `connection "${id}" is changing too often; retry`);
      }
    }
  }

  async listEvents(organizationId: string, connectionId: string, page: PageRequest): Promise<EventPage> {
    await this.get(organizationId, connectionId);
    const boundTo = ["events", connectionId];
    const result = await this.store.listEvents({
      connectionId,
      after: decodePageToken(page.pageToken, boundTo),
      limit: pageSize(page.pageSize),
    });
    return {
      events: result.items,
      nextPageToken: result.nextCursor === undefined ? "" : encodePageToken(result.nextCursor, boundTo),
    };
  }

  async check(connectionId: string, organizationId: string, action: CheckAction, scope: string): Promise<CheckResult> {
    const connection = await this.store.getConnectionForCheck(connectionId);
    const decision = decideCheck(connection, organizationId, action, scope);
    return { decision, connection: decision.isParty ? connection : undefined };
  }

  private event(
    actor: Actor,
    connection: ConnectionRecord,
    type: EventRecord["type"],
    fromState: State | undefined,
    reason: string,
  ): EventRecord {
    return {
      id: newId("evt"),
      connectionId: connection.id,
      type,
      fromState,
      toState: connection.state,
      actorOrganizationId: actor.organizationId,
      caller: actor.caller,
      actor: actor.actor,
      reason,
      requestId: actor.requestId,
      createTime: connection.updateTime,
    };
  }
}

function replay(
  earlier: ConnectionRecord,
  wanted: { destinationOrganizationId: string; scopes: readonly string[]; name: string; requestId: string },
): ConnectionRecord {
  const same =
    earlier.destinationOrganizationId === wanted.destinationOrganizationId &&
    earlier.name === wanted.name &&
    earlier.scopes.join(" ") === wanted.scopes.join(" ");
  if (!same) {
    throw new ServiceError(
      "REQUEST_ID_REUSED",
      `request_id "${wanted.requestId}" was already used with other parameters`,
      { field: "request_id" },
    );
  }
  return earlier;
}

function connectionNotFound(id: string): ServiceError {
  return new ServiceError("CONNECTION_NOT_FOUND", `connection "${id}" not found`);
}

function etagMismatch(id: string): ServiceError {
  return new ServiceError("ETAG_MISMATCH", `connection "${id}" has changed since that etag; read it again`);
}

function refusalError(
  refusal: "CONNECTION_NOT_FOUND" | "ONLY_DESTINATION_CAN_ACTIVATE" | "ONLY_SOURCE_CAN_REACTIVATE",
  id: string,
): ServiceError {
  switch (refusal) {
    case "CONNECTION_NOT_FOUND":
      return connectionNotFound(id);
    case "ONLY_DESTINATION_CAN_ACTIVATE":
      return new ServiceError("ONLY_DESTINATION_CAN_ACTIVATE", "only the destination organization can activate it");
    case "ONLY_SOURCE_CAN_REACTIVATE":
      return new ServiceError("ONLY_SOURCE_CAN_REACTIVATE", "only the source organization can reactivate it");
  }
}
