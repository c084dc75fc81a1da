// Use cases of Connections: each reads through the store, asks the domain, and writes back.
// Input here is already well-formed (src/api validates the wire); the rules live in the domain.

import {
  accessOf,
  type CheckAction,
  type CheckDecision,
  decideCheck,
  decideTransition,
  decideUpdate,
  type EventType,
  isSelfConnection,
  normalizeScopes,
  type State,
  type Transition,
  type TransitionRefusal,
  type UpdateRequest,
} from "../domain/connection.js";
import type { Cancellation } from "../runtime/cancellation.js";
import {
  AlreadyExistsError,
  type ConnectionRecord,
  type Direction,
  type EventRecord,
  type IdempotencyRecord,
  type Store,
} from "../store/store.js";
import { invalidArgument, ServiceError, unknownScope } from "./errors.js";
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
  readonly signal?: Cancellation;
  /**
   * For a write with a request_id: the record that answers it with the Connection it returns,
   * saved in the write's own transaction (src/api/idempotency.ts replays it to retries).
   */
  readonly answerFor?: (connection: ConnectionRecord) => IdempotencyRecord;
}

export interface NewConnection {
  readonly destinationOrganizationId: string;
  readonly scopes: readonly string[];
  readonly name: string;
  /** The request_id it was created with, or "" (kept on the Connection for the record). */
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

/** What changes: the fields named in the update mask. Scopes as sent (they are normalized here). */
export interface ConnectionChanges {
  readonly name?: string;
  readonly scopes?: readonly string[];
}

export interface CheckRequest {
  readonly connectionId: string;
  readonly organizationId: string;
  readonly action: CheckAction;
  readonly scope: string;
}

export interface CheckResult {
  readonly decision: CheckDecision;
  /** Only for a party to the Connection. */
  readonly connection: ConnectionRecord | undefined;
}

/** How often a write that lost a race re-reads and decides again before giving up. */
const WRITE_ATTEMPTS = 5;

/** A change that a write decided on, from the Connection as it stood. */
interface Change {
  readonly type: EventType;
  readonly state: State;
  readonly name: string;
  readonly scopes: readonly string[];
  readonly reason: string;
}

/** What a write decides: a refusal, nothing to do, or a change. */
type Decided = ServiceError | "UNCHANGED" | Change;

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
    const scopes = normalizedScopes("scopes", input.scopes);
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
      scopes,
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
        this.event(actor, undefined, connection, "CREATED", ""),
        actor.signal,
        actor.answerFor?.(connection),
      );
      return connection;
    } catch (error) {
      if (!(error instanceof AlreadyExistsError) || error.conflict !== "pair") throw error;
      const existing = await this.store.findConnectionByPair(source, input.destinationOrganizationId);
      throw new ServiceError(
        "CONNECTION_ALREADY_EXISTS",
        `a connection from "${source}" to "${input.destinationOrganizationId}" already exists`,
        { connection_id: existing?.id ?? "" },
      );
    }
  }

  /**
   * A Connection the organization may see (the domain's accessOf). Read as a check reads it: as
   * exact as the database (every write that returned is seen), and on SQLite from the check cache
   * or one prepared read, without waiting for the connection that writes hold. Read through it, a
   * dashboard's GetConnection did not wait behind a storm's queue of reads. Writes read the row
   * they will replace from the database itself (`write` below): the cache learns of a write only
   * once it is on the disk, and a write that lost a race must see the winner when it tries again.
   */
  async get(organizationId: string, id: string): Promise<ConnectionRecord> {
    const access = accessOf(await this.store.getConnectionForCheck(id), organizationId);
    if (!access.ok) throw connectionNotFound(id);
    return access.connection;
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
    return this.write(actor, id, options.etag, (current) => {
      const decision = decideTransition(current, transition, actor.organizationId);
      if (!decision.ok) {
        if (decision.refusal !== "INVALID_STATE_TRANSITION") return refusalError(decision.refusal, id);
        return new ServiceError(
          "INVALID_STATE_TRANSITION",
          `cannot ${transition.toLowerCase()} connection "${id}" in state ${current.state}`,
          { state: `STATE_${current.state}` },
        );
      }
      return {
        type: decision.event,
        state: decision.to,
        name: current.name,
        scopes: current.scopes,
        reason: options.reason,
      };
    });
  }

  /** Changes the name and/or scopes (only the fields in `changes`); the domain's consent rule decides the state. */
  async update(actor: Actor, id: string, changes: ConnectionChanges, etag: string): Promise<ConnectionRecord> {
    const request: UpdateRequest = {
      ...(changes.name === undefined ? {} : { name: changes.name }),
      ...(changes.scopes === undefined ? {} : { scopes: normalizedScopes("connection.scopes", changes.scopes) }),
    };
    return this.write(actor, id, etag, (current) => {
      const decision = decideUpdate(current, actor.organizationId, request);
      if (!decision.ok) return refusalError(decision.refusal, id);
      if (!decision.changed) return "UNCHANGED";
      return { type: "UPDATED", state: decision.to, name: decision.name, scopes: decision.scopes, reason: "" };
    });
  }

  /**
   * Reads the Connection, decides, and saves the next version with its event under the optimistic
   * version lock, deciding again (a bounded number of times) when another write came in between.
   */
  private async write(
    actor: Actor,
    id: string,
    etag: string,
    decide: (current: ConnectionRecord) => Decided,
  ): Promise<ConnectionRecord> {
    for (let attempt = 1; ; attempt++) {
      const current = await this.store.getConnection(id);
      if (current === undefined) throw connectionNotFound(id);
      const decided = decide(current);
      // Who may act is answered before the etag; whether the state allows it, after.
      if (decided instanceof ServiceError && decided.reason !== "INVALID_STATE_TRANSITION") throw decided;
      if (etag !== "" && etag !== etagOf(current)) throw etagMismatch(id);
      if (decided instanceof ServiceError) throw decided;
      if (decided === "UNCHANGED") {
        const answer = actor.answerFor?.(current);
        if (answer !== undefined) await this.store.saveIdempotencyRecord(answer, actor.signal);
        return current;
      }

      const now = this.now();
      const entered = (state: State) => decided.state === state && current.state !== state;
      const next: ConnectionRecord = {
        ...current,
        name: decided.name,
        scopes: decided.scopes,
        state: decided.state,
        updateTime: now,
        activateTime: entered("ACTIVE") ? now : current.activateTime,
        deactivateTime: entered("INACTIVE") ? now : current.deactivateTime,
        version: current.version + 1,
      };
      const event = this.event(actor, current, next, decided.type, decided.reason);
      if (await this.store.saveTransition(next, event, actor.signal, actor.answerFor?.(next))) return next;
      // Someone else changed it between our read and our write.
      if (etag !== "") throw etagMismatch(id);
      if (attempt === WRITE_ATTEMPTS) {
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

  async check(request: CheckRequest): Promise<CheckResult> {
    return answer(request, await this.store.getConnectionForCheck(request.connectionId));
  }

  /** Many checks, each answered exactly as `check` would, from Connections read together. */
  async checkMany(requests: readonly CheckRequest[]): Promise<CheckResult[]> {
    const connections = await this.store.getConnectionsForCheck(requests.map((request) => request.connectionId));
    return requests.map((request, index) => answer(request, connections[index]));
  }

  private event(
    actor: Actor,
    previous: ConnectionRecord | undefined,
    connection: ConnectionRecord,
    type: EventType,
    reason: string,
  ): EventRecord {
    return {
      id: newId("evt"),
      connectionId: connection.id,
      type,
      fromState: previous?.state,
      toState: connection.state,
      sourceOrganizationId: connection.sourceOrganizationId,
      destinationOrganizationId: connection.destinationOrganizationId,
      scopes: connection.scopes,
      previousScopes: type === "UPDATED" && previous !== undefined ? previous.scopes : [],
      actorOrganizationId: actor.organizationId,
      caller: actor.caller,
      actor: actor.actor,
      reason,
      requestId: actor.requestId,
      createTime: connection.updateTime,
    };
  }
}

function answer(request: CheckRequest, connection: ConnectionRecord | undefined): CheckResult {
  const decision = decideCheck(connection, request.organizationId, request.action, request.scope);
  return { decision, connection: decision.isParty ? connection : undefined };
}

/** Scopes from a request, normalized; refusals name `field`. */
function normalizedScopes(field: string, scopes: readonly string[]): string[] {
  const normalized = normalizeScopes(scopes);
  if (normalized.ok) return normalized.scopes;
  if (normalized.refusal === "NO_SCOPES") throw invalidArgument(field, `${field}: name at least one scope`);
  throw unknownScope(field, normalized.scope ?? "");
}

function connectionNotFound(id: string): ServiceError {
  return new ServiceError("CONNECTION_NOT_FOUND", `connection "${id}" not found`);
}

function etagMismatch(id: string): ServiceError {
  return new ServiceError("ETAG_MISMATCH", `connection "${id}" has changed since that etag; read it again`);
}

function refusalError(
  refusal: Exclude<TransitionRefusal, "INVALID_STATE_TRANSITION"> | "ONLY_SOURCE_CAN_UPDATE",
  id: string,
): ServiceError {
  switch (refusal) {
    case "CONNECTION_NOT_FOUND":
      return connectionNotFound(id);
    case "ONLY_DESTINATION_CAN_ACTIVATE":
      return new ServiceError("ONLY_DESTINATION_CAN_ACTIVATE", "only the destination organization can activate it");
    case "ONLY_SOURCE_CAN_REACTIVATE":
      return new ServiceError("ONLY_SOURCE_CAN_REACTIVATE", "only the source organization can reactivate it");
    case "ONLY_SOURCE_CAN_UPDATE":
      return new ServiceError("ONLY_SOURCE_CAN_UPDATE", "only the source organization can change what it shares");
  }
}
