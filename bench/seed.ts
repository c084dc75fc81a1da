// The data set the benchmark runs on, written through the service's own store (openStore, then
// createConnection and saveTransition) before the service process starts on the same database.
//
// Regular organizations share with each other at random (a few share much more than most); one
// "big" organization has a Connection with each of many small "leaf" organizations, half of them
// outbound and half inbound, so ListConnections can be paged deep into its rows.

import { newId } from "../src/app/ids.js";
import type { EventType, State } from "../src/domain/connection.js";
import { openStore } from "../src/store/open.js";
import type { ConnectionRecord, EventRecord, Store } from "../src/store/store.js";

export interface SeedOptions {
  /** Regular organizations. */
  readonly organizations: number;
  /** Connections in all, the big organization's included. */
  readonly connections: number;
  /** Connections of the big organization (one leaf organization per two); the rest are regular. */
  readonly bigOrganizationConnections: number;
  /** Store calls in flight at once. */
  readonly concurrency: number;
  /** For the pseudo-random choices, so that runs see the same shape of data. */
  readonly randomSeed: number;
}

export interface SeededConnection {
  readonly id: string;
  readonly source: string;
  readonly destination: string;
  readonly state: State;
  readonly scopes: readonly string[];
}

export interface Dataset {
  readonly organizations: readonly string[];
  readonly bigOrganizationId: string;
  readonly connections: readonly SeededConnection[];
  /** "source destination" of every seeded Connection, so new ones can avoid them. */
  readonly pairs: ReadonlySet<string>;
}

export interface SeedReport {
  readonly dataset: Dataset;
  readonly organizationCount: number;
  readonly transitions: number;
  readonly seconds: number;
}

export const BIG_ORGANIZATION_ID = "org_big";
export const SCOPES = ["account.read", "inquiry.read", "transaction.read", "verification.read"] as const;

/** mulberry32: small, fast and good enough to shape a data set. */
export function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function regularOrganizationId(index: number): string {
  return `org_bench_${String(index).padStart(5, "0")}`;
}

/** Runs `work(0..count-1)` with at most `concurrency` calls in flight; stops at the first failure. */
export async function forEachConcurrently(
  count: number,
  concurrency: number,
  work: (index: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (!failed && next < count) {
      const index = next++;
      try {
        await work(index);
      } catch (error) {
        failed = true;
        throw error;
      }
    }
  };
  // Let every worker finish its current call before reporting a failure (the store closes next).
  const outcomes = await Promise.allSettled(Array.from({ length: Math.min(concurrency, count) }, worker));
  const failure = outcomes.find((outcome) => outcome.status === "rejected");
  if (failure !== undefined) throw failure.reason;
}

interface Plan {
  readonly source: string;
  readonly destination: string;
  readonly state: State;
  readonly scopes: string[];
  /** The transitions after creation that lead to `state`. */
  readonly path: readonly ("ACTIVATE" | "DEACTIVATE" | "REACTIVATE")[];
}

/** About 60% ACTIVE, 25% PENDING (some of them re-consenting), 15% INACTIVE. */
function pathTo(next: () => number): Pick<Plan, "state" | "path"> {
  const roll = next();
  if (roll < 0.6) return { state: "ACTIVE", path: ["ACTIVATE"] };
  if (roll < 0.85) {
    return next() < 0.15
      ? { state: "PENDING", path: ["ACTIVATE", "DEACTIVATE", "REACTIVATE"] }
      : { state: "PENDING", path: [] };
  }
  return next() < 0.6
    ? { state: "INACTIVE", path: ["ACTIVATE", "DEACTIVATE"] }
    : { state: "INACTIVE", path: ["DEACTIVATE"] };
}

/** One to four scopes, fewer more often; sorted as the store keeps them. */
function scopesFor(next: () => number): string[] {
  const count = next() < 0.45 ? 1 : next() < 0.6 ? 2 : next() < 0.6 ? 3 : 4;
  const shuffled = [...SCOPES].sort(() => next() - 0.5);
  return shuffled.slice(0, count).sort();
}

function planDataset(options: SeedOptions): { organizations: string[]; leaves: string[]; plans: Plan[] } {
  const next = random(options.randomSeed);
  const organizations = Array.from({ length: options.organizations }, (_, index) => regularOrganizationId(index));
  const regular = options.connections - options.bigOrganizationConnections;
  if (regular < 0) throw new Error("the big organization cannot have more connections than there are in all");
  if (regular > options.organizations * (options.organizations - 1) * 0.5) {
    throw new Error("too many connections for so few organizations: raise BENCH_ORGS");
  }
  const leafCount = Math.ceil(options.bigOrganizationConnections / 2);
  const leaves = Array.from({ length: leafCount }, (_, index) => `org_leaf_${String(index).padStart(6, "0")}`);
  const pairs = new Set<string>();
  const plans: Plan[] = [];
  // Sources are skewed (density ~ x^-1/3: the busiest organization has ~15x the average),
  // destinations uniform.
  while (plans.length < regular) {
    const source = organizations[Math.floor(options.organizations * next() ** 1.5)] as string;
    const destination = organizations[Math.floor(options.organizations * next())] as string;
    const key = `${source} ${destination}`;
    if (source === destination || pairs.has(key)) continue;
    pairs.add(key);
    plans.push({ source, destination, scopes: scopesFor(next), ...pathTo(next) });
  }
  for (let index = 0; index < options.bigOrganizationConnections; index++) {
    const leaf = leaves[index >> 1] as string;
    const outbound = index % 2 === 0;
    const [source, destination] = outbound ? [BIG_ORGANIZATION_ID, leaf] : [leaf, BIG_ORGANIZATION_ID];
    plans.push({ source, destination, scopes: scopesFor(next), ...pathTo(next) });
  }
  // Interleave the big organization's Connections with the others, as they would have arrived.
  for (let index = plans.length - 1; index > 0; index--) {
    const other = Math.floor(next() * (index + 1));
    [plans[index], plans[other]] = [plans[other] as Plan, plans[index] as Plan];
  }
  return { organizations, leaves, plans };
}

const DAY_MS = 86_400_000;

/** Creates the Connection of `plan` and walks it through its transitions, as the service would. */
async function seedConnection(store: Store, plan: Plan, createTime: Date): Promise<{ id: string; steps: number }> {
  let current: ConnectionRecord = {
    id: newId("cxn"),
    sourceOrganizationId: plan.source,
    destinationOrganizationId: plan.destination,
    name: `${plan.source} to ${plan.destination}`,
    scopes: plan.scopes,
    state: "PENDING",
    createTime,
    updateTime: createTime,
    activateTime: undefined,
    deactivateTime: undefined,
    creator: "user:usr_seed",
    createRequestId: "",
    version: 1,
  };
  const event = (
    record: ConnectionRecord,
    type: EventType,
    from: State | undefined,
    actorOrganizationId: string,
  ): EventRecord => ({
    id: newId("evt"),
    connectionId: record.id,
    type,
    fromState: from,
    toState: record.state,
    sourceOrganizationId: record.sourceOrganizationId,
    destinationOrganizationId: record.destinationOrganizationId,
    scopes: record.scopes,
    previousScopes: [],
    actorOrganizationId,
    caller: type === "ACTIVATED" ? "dashboard-bff" : "api-gateway",
    actor: "user:usr_seed",
    reason: type === "DEACTIVATED" ? "seeded" : "",
    requestId: newId("req"),
    createTime: record.updateTime,
  });
  await store.createConnection(current, event(current, "CREATED", undefined, plan.source));
  let time = createTime.getTime();
  for (const transition of plan.path) {
    time += DAY_MS;
    const at = new Date(time);
    const [state, type, actor]: [State, EventType, string] =
      transition === "ACTIVATE"
        ? ["ACTIVE", "ACTIVATED", plan.destination]
        : transition === "DEACTIVATE"
          ? ["INACTIVE", "DEACTIVATED", plan.source]
          : ["PENDING", "REACTIVATED", plan.source];
    const next: ConnectionRecord = {
      ...current,
      state,
      updateTime: at,
      activateTime: state === "ACTIVE" ? at : current.activateTime,
      deactivateTime: state === "INACTIVE" ? at : current.deactivateTime,
      version: current.version + 1,
    };
    if (!(await store.saveTransition(next, event(next, type, current.state, actor)))) {
      throw new Error(`seeding: transition of ${current.id} lost a race it cannot have`);
    }
    current = next;
  }
  return { id: current.id, steps: plan.path.length };
}

/** Seeds an empty database and closes the store (SQLite is then free for the service to lock). */
export async function seedDatabase(
  databaseUrl: string,
  options: SeedOptions,
  progress: (line: string) => void,
): Promise<SeedReport> {
  const started = performance.now();
  const { organizations, leaves, plans } = planDataset(options);
  const store = await openStore({ databaseUrl, poolSize: Math.min(options.concurrency, 20) });
  try {
    const allOrganizations = [...organizations, BIG_ORGANIZATION_ID, ...leaves];
    const yearAgo = Date.now() - 400 * DAY_MS;
    await forEachConcurrently(allOrganizations.length, options.concurrency, async (index) => {
      const id = allOrganizations[index] as string;
      await store.createOrganization({ id, name: `Organization ${id}`, createTime: new Date(yearAgo) });
    });

    const connections: SeededConnection[] = new Array(plans.length);
    let transitions = 0;
    let done = 0;
    let lastReport = performance.now();
    const spacing = (365 * DAY_MS) / plans.length;
    await forEachConcurrently(plans.length, options.concurrency, async (index) => {
      const plan = plans[index] as Plan;
      const { id, steps } = await seedConnection(store, plan, new Date(yearAgo + DAY_MS + index * spacing));
      connections[index] = {
        id,
        source: plan.source,
        destination: plan.destination,
        state: plan.state,
        scopes: plan.scopes,
      };
      transitions += steps;
      done++;
      const now = performance.now();
      if (now - lastReport > 5000) {
        lastReport = now;
        const rate = Math.round(done / ((now - started) / 1000));
        progress(`  ${done.toLocaleString("en-US")} / ${plans.length.toLocaleString("en-US")} connections (${rate}/s)`);
      }
    });
    return {
      dataset: {
        organizations,
        bigOrganizationId: BIG_ORGANIZATION_ID,
        connections,
        pairs: new Set(plans.map((plan) => `${plan.source} ${plan.destination}`)),
      },
      organizationCount: allOrganizations.length,
      transitions,
      seconds: (performance.now() - started) / 1000,
    };
  } finally {
    await store.close();
  }
}
