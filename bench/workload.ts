// What the load client is asked to do (a plan, written to a JSON file) and what it reports back,
// and the pre-encoded request pools the plans carry.

import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Connection_State } from "../gen/connections/v1/connection_pb.js";
import {
  CheckConnectionRequest_Action,
  CheckConnectionRequestSchema,
  CheckConnectionResponse_Reason,
  CheckConnectionResponseSchema,
  CreateConnectionRequestSchema,
} from "../gen/connections/v1/connection_service_pb.js";
import { type Dataset, random, SCOPES, type SeededConnection } from "./seed.js";

export const CHECK_PATH = "/connections.v1.ConnectionService/CheckConnection";
export const CREATE_PATH = "/connections.v1.ConnectionService/CreateConnection";
export const LIST_PATH = "/connections.v1.ConnectionService/ListConnections";

/**
 * What the baselines answer every CheckConnection with: as large as a typical allowed answer of
 * the service (the Connection filled in), so that every server sends about the same bytes.
 */
export const SAMPLE_CHECK_RESPONSE = create(CheckConnectionResponseSchema, {
  allowed: true,
  reason: CheckConnectionResponse_Reason.ALLOWED,
  state: Connection_State.ACTIVE,
  connection: {
    id: "cxn_Yk3v9QmX2r8TqLw0ZbN4aA",
    sourceOrganizationId: "org_bench_00042",
    destinationOrganizationId: "org_bench_01337",
    name: "org_bench_00042 to org_bench_01337",
    scopes: ["account.read", "transaction.read"],
    state: Connection_State.ACTIVE,
    createTime: timestampFromDate(new Date("2026-01-05T10:00:00Z")),
    updateTime: timestampFromDate(new Date("2026-01-06T10:00:00Z")),
    activateTime: timestampFromDate(new Date("2026-01-06T10:00:00Z")),
    creator: "user:usr_seed",
    etag: '"2"',
  },
});

export interface RequestItem {
  /** The protobuf message, base64, without the gRPC frame (the client adds it once, up front). */
  readonly body: string;
  /** Headers of this request only, on top of the plan's. */
  readonly headers?: Readonly<Record<string, string>>;
  /** CheckConnection: the reason the answer must carry. */
  readonly expectReason?: number;
}

interface PlanBase {
  readonly url: string;
  readonly path: string;
  readonly headers: Readonly<Record<string, string>>;
  /** HTTP/2 connections to spread the streams over. */
  readonly sessions: number;
}

/** Closed-loop load: `concurrency` requests always in flight, for a warm-up and then a measured time. */
export interface LoadPlan extends PlanBase {
  readonly kind: "load";
  readonly concurrency: number;
  readonly warmupSeconds: number;
  readonly seconds: number;
  readonly requests: readonly RequestItem[];
  /** False: each request is sent once (unique creates), and the run ends early if they run out. */
  readonly reuse: boolean;
}

/** ListConnections, one request at a time: a walk through every page, then first and deep pages again. */
export interface ListPlan extends PlanBase {
  readonly kind: "list";
  readonly pageSize: number;
  /** How often the first and the deepest page are fetched again after the walk. */
  readonly repeats: number;
}

export type Plan = LoadPlan | ListPlan;

export interface LatencySummary {
  readonly count: number;
  readonly meanMs: number;
  readonly p50Ms: number;
  readonly p90Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
}

export interface LoadResult {
  readonly kind: "load";
  /** Requests that completed OK inside the measured window. */
  readonly completed: number;
  readonly seconds: number;
  readonly requestsPerSecond: number;
  readonly latency: LatencySummary;
  /** Every failure of the whole run (warm-up included), by description. */
  readonly errors: Readonly<Record<string, number>>;
  /** OK answers whose content was not what the data set says (e.g. a wrong CheckConnection reason). */
  readonly wrongAnswers: number;
  readonly wrongAnswerExamples: readonly string[];
  /** The load client's own CPU time over the measured window, in % of one core. */
  readonly clientCpuPercent: number;
  /** Unique requests ran out before the measured window ended. */
  readonly exhausted: boolean;
}

export interface ListResult {
  readonly kind: "list";
  readonly pages: number;
  readonly rows: number;
  readonly walkSeconds: number;
  readonly first: LatencySummary;
  /** The deepest full page: its number and latency. */
  readonly deepPage: number;
  readonly deep: LatencySummary;
  readonly errors: Readonly<Record<string, number>>;
}

export type ClientMessage =
  | { readonly type: "measure-start" }
  | { readonly type: "measure-end" }
  | { readonly type: "result"; readonly result: LoadResult | ListResult };

const base64 = (bytes: Uint8Array) => Buffer.from(bytes).toString("base64");

/**
 * CheckConnection requests over random seeded Connections, as the token service would send them:
 * about 80% allowed; the rest denied for the wrong organization (7%: the other party or a
 * stranger), a Connection that is not active (8%) or a scope it does not grant (5%).
 */
export function checkRequests(dataset: Dataset, count: number, randomSeed: number): RequestItem[] {
  const next = random(randomSeed);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)] as T;
  const active = dataset.connections.filter((connection) => connection.state === "ACTIVE");
  const notActive = dataset.connections.filter((connection) => connection.state !== "ACTIVE");
  const narrow = active.filter((connection) => connection.scopes.length < SCOPES.length);
  const Reason = CheckConnectionResponse_Reason;

  const request = (connection: SeededConnection, issue: boolean, organizationId: string, scope: string) =>
    create(CheckConnectionRequestSchema, {
      connectionId: connection.id,
      organizationId,
      action: issue
        ? CheckConnectionRequest_Action.ISSUE_SHARE_TOKEN
        : CheckConnectionRequest_Action.REDEEM_SHARE_TOKEN,
      scope,
    });
  const item = (connection: SeededConnection, expectReason: number, organizationId?: string, scope?: string) => {
    const issue = next() < 0.5;
    const party = issue ? connection.source : connection.destination;
    const message = request(connection, issue, organizationId ?? party, scope ?? pick(connection.scopes));
    return { body: base64(toBinary(CheckConnectionRequestSchema, message)), expectReason };
  };

  const items: RequestItem[] = [];
  while (items.length < count) {
    const roll = next();
    if (roll < 0.8) {
      items.push(item(pick(active), Reason.ALLOWED));
    } else if (roll < 0.87) {
      const connection = pick(dataset.connections);
      const issue = next() < 0.5;
      // The other party, or an organization that is no party at all.
      let organizationId = issue ? connection.destination : connection.source;
      if (next() < 0.5) {
        do organizationId = pick(dataset.organizations);
        while (organizationId === connection.source || organizationId === connection.destination);
      }
      const message = request(connection, issue, organizationId, pick(connection.scopes));
      items.push({
        body: base64(toBinary(CheckConnectionRequestSchema, message)),
        expectReason: Reason.WRONG_ORGANIZATION,
      });
    } else if (roll < 0.95) {
      items.push(item(pick(notActive), Reason.NOT_ACTIVE));
    } else {
      const connection = pick(narrow);
      const missing = SCOPES.filter((scope) => !connection.scopes.includes(scope));
      const issue = next() < 0.5;
      const message = request(connection, issue, issue ? connection.source : connection.destination, pick(missing));
      items.push({
        body: base64(toBinary(CheckConnectionRequestSchema, message)),
        expectReason: Reason.SCOPE_NOT_GRANTED,
      });
    }
  }
  return items;
}

/** CreateConnection requests for ordered pairs that have no Connection yet, each with its own request_id. */
export function createRequests(dataset: Dataset, count: number, randomSeed: number, runTag: string): RequestItem[] {
  const next = random(randomSeed);
  const organizations = dataset.organizations;
  const taken = new Set(dataset.pairs);
  const items: RequestItem[] = [];
  const pairsLeft = organizations.length * (organizations.length - 1) - taken.size;
  if (count > pairsLeft / 2) throw new Error("too few free pairs for the CreateConnection pool: raise BENCH_ORGS");
  while (items.length < count) {
    const source = organizations[Math.floor(next() * organizations.length)] as string;
    const destination = organizations[Math.floor(next() * organizations.length)] as string;
    const key = `${source} ${destination}`;
    if (source === destination || taken.has(key)) continue;
    taken.add(key);
    const scopes = SCOPES.filter(() => next() < 0.5);
    const message = create(CreateConnectionRequestSchema, {
      destinationOrganizationId: destination,
      scopes: scopes.length > 0 ? scopes : ["account.read"],
      name: `Bench share ${items.length}`,
      requestId: `bench-${runTag}-${items.length}`,
    });
    items.push({
      body: base64(toBinary(CreateConnectionRequestSchema, message)),
      headers: { "x-organization-id": source },
    });
  }
  return items;
}
