// The writes section of `npm run bench`: CreateConnection with unique pairs, then Activate and
// Deactivate transitions of what was created, with CheckConnection from the same client in the
// same run, on SQLite (one service, every write fsynced) and, when a PostgreSQL server is named, on
// PostgreSQL with three replicas (the client spreads its calls over them). 64 calls in flight;
// every answer is decoded and checked (the Connection's parties and state, the check's reason).
// Last, creates at half the measured rate, sent on a schedule (open loop), for their p99: latency
// counts from when a call was due, so a stalled server cannot hide its queue.
//
// Prints figures; asserts nothing about time. Throws when a call failed or an answer was wrong.

import { randomBytes } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { create, type DescMessage, fromBinary, type MessageShape, toBinary } from "@bufbuild/protobuf";
import pg from "pg";
import { Connection_State } from "../gen/connections/v1/connection_pb.js";
import {
  ActivateConnectionRequestSchema,
  ActivateConnectionResponseSchema,
  CheckConnectionRequest_Action,
  CheckConnectionRequestSchema,
  CheckConnectionResponse_Reason,
  CheckConnectionResponseSchema,
  CreateConnectionRequestSchema,
  CreateConnectionResponseSchema,
  DeactivateConnectionRequestSchema,
  DeactivateConnectionResponseSchema,
} from "../gen/connections/v1/connection_service_pb.js";
import {
  CreateOrganizationRequestSchema,
  CreateOrganizationResponseSchema,
} from "../gen/connections/v1/organization_service_pb.js";
import { integer } from "./config.js";
import { type Channel, Errors, failureOf, frame, openChannel } from "./grpc-client.js";
import {
  cpuSecondsOfProcessesNamed,
  machineCpuSeconds,
  onCleanUp,
  processCpuSeconds,
  processSystemCalls,
  type StartedService,
  startService,
} from "./processes.js";
import { summariseProfile } from "./profile.js";
import { table } from "./report.js";
import { writeProductionCallers } from "./servers.js";

export interface WritesOptions {
  /** A private directory for the callers file, databases and logs. */
  readonly workDir: string;
  /** Names a PostgreSQL server where a database may be created; undefined skips PostgreSQL. */
  readonly postgresAdminUrl: string | undefined;
  readonly logLevel: string | undefined;
  /** Measured seconds per phase. */
  readonly seconds: number;
  readonly log: (line?: string) => void;
  readonly progress: (line: string) => void;
  /** When set, the services run with --cpu-prof; the first one's profile over the creates is summarised. */
  readonly cpuProfileDir: string | undefined;
  /** How many replicas serve the PostgreSQL deployment (the client spreads its calls over them). */
  readonly postgresReplicas: number;
  /** Which deployments run: "sqlite", "postgres" (the latter only with postgresAdminUrl). */
  readonly deployments: ReadonlySet<string>;
}

// 64 unless BENCH_WRITES_IN_FLIGHT says otherwise (the issue measures at 64).
const IN_FLIGHT = integer("BENCH_WRITES_IN_FLIGHT", 64);
// The open-loop phase's rate: half the measured creates unless BENCH_WRITES_OPEN_RATE sets one
// (to compare the CPU per create of deployments at the same rate per replica).
const HALF_LOAD_RATE = integer("BENCH_WRITES_OPEN_RATE", 0) || undefined;
const ORGANIZATIONS = 400;
/** Unmeasured calls of each RPC per replica before the measured phases. */
const WARM_UP_CALLS = 1500;
const SESSIONS_PER_REPLICA = 2;
const SCOPE = "account.read";
const GOALS = { sqliteCreates: 3000, postgresCreates: 2000, createsVsChecks: 0.25, p99HalfLoadMs: 20 } as const;

const SERVICE = "/connections.v1.ConnectionService/";
const PATHS = {
  createOrganization: "/connections.v1.OrganizationService/CreateOrganization",
  create: `${SERVICE}CreateConnection`,
  activate: `${SERVICE}ActivateConnection`,
  deactivate: `${SERVICE}DeactivateConnection`,
  check: `${SERVICE}CheckConnection`,
} as const;
type PathName = keyof typeof PATHS;

type Tokens = Record<"provisioning" | "dashboard-bff" | "api-gateway" | "token-service", string>;

/** Calls spread over every replica, one channel per (replica, RPC). */
class Client {
  #next = 0;

  private constructor(
    private readonly channels: ReadonlyMap<PathName, readonly Channel[]>,
    readonly errors: Errors,
  ) {}

  static async open(urls: readonly string[]): Promise<Client> {
    const errors = new Errors();
    const channels = new Map<PathName, Channel[]>();
    for (const name of Object.keys(PATHS) as PathName[]) {
      channels.set(
        name,
        await Promise.all(
          urls.map((url) => openChannel({ url, path: PATHS[name], sessions: SESSIONS_PER_REPLICA }, errors)),
        ),
      );
    }
    return new Client(channels, errors);
  }

  /** One call; resolves with the decoded answer, rejects with what was wrong. */
  call<O extends DescMessage>(
    name: PathName,
    headers: Record<string, string>,
    body: Uint8Array,
    answer: O,
  ): Promise<MessageShape<O>> {
    const channels = this.channels.get(name) as readonly Channel[];
    const slot = this.#next++;
    const channel = channels[slot % channels.length] as Channel;
    return new Promise((resolve, reject) =>
      channel.call(Math.floor(slot / channels.length), headers, frame(body), (received) => {
        const failure = failureOf(received);
        if (failure === undefined) resolve(fromBinary(answer, received.body.subarray(5)));
        else reject(new Error(`${name}: ${failure}`));
      }),
    );
  }

  close(): void {
    for (const list of this.channels.values()) for (const channel of list) channel.close();
  }
}

interface PhaseResult {
  readonly done: number;
  readonly seconds: number;
  readonly perSecond: number;
  readonly p99Ms: number;
  /** The services' CPU time (every replica, not the database) per call, in microseconds. */
  cpuUsPerCall?: number;
  /** Where the machine's CPU went over the phase, in microseconds per call. */
  cpuSplit?: CpuSplit;
}

/**
 * CPU time per call of each replica, of this process (the client), of PostgreSQL's processes, and of
 * the machine; and the replicas' read and write system calls and wake-ups per call (all replicas).
 */
interface CpuSplit {
  readonly replicas: readonly number[];
  readonly reads: number;
  readonly writes: number;
  readonly wakeUps: number;
  readonly client: number;
  readonly database: number;
  readonly machine: number;
}

/** The CPU seconds used so far by the replicas, this process, PostgreSQL's processes (by pid) and the machine. */
function cpuNow(pids: readonly number[]) {
  const own = process.cpuUsage();
  return {
    replicas: pids.map(processCpuSeconds),
    calls: pids.map(processSystemCalls),
    client: (own.user + own.system) / 1e6,
    database: cpuSecondsOfProcessesNamed("postgres"),
    machine: machineCpuSeconds().busy,
  };
}

/** What each part used between two readings of cpuNow, in microseconds per call. */
function cpuPerCall(before: ReturnType<typeof cpuNow>, after: ReturnType<typeof cpuNow>, calls: number): CpuSplit {
  const perCall = (seconds: number) => (seconds / calls) * 1e6;
  let database = 0;
  // A backend that started in the window counts from zero; one that ended in it is lost.
  for (const [pid, seconds] of after.database) database += seconds - (before.database.get(pid) ?? 0);
  const callsPerCall = (kind: "reads" | "writes" | "wakeUps") =>
    after.calls.reduce((sum, counts, index) => sum + counts[kind] - (before.calls[index]?.[kind] ?? 0), 0) / calls;
  return {
    replicas: after.replicas.map((seconds, index) => perCall(seconds - (before.replicas[index] ?? 0))),
    reads: callsPerCall("reads"),
    writes: callsPerCall("writes"),
    wakeUps: callsPerCall("wakeUps"),
    client: perCall(after.client - before.client),
    database: perCall(database),
    machine: perCall(after.machine - before.machine),
  };
}

/** Runs a phase and puts the services' CPU time per call, and the machine's split, on its result. */
async function withCpu(pids: readonly number[], phase: () => Promise<PhaseResult>): Promise<PhaseResult> {
  const before = cpuNow(pids);
  const result = await phase();
  result.cpuSplit = cpuPerCall(before, cpuNow(pids), result.done);
  result.cpuUsPerCall = result.cpuSplit.replicas.reduce((sum, value) => sum + value, 0);
  return result;
}

const IDLE_SECONDS = 2;

/** Each replica's CPU over IDLE_SECONDS without calls, in % of a core. */
async function idleCpu(pids: readonly number[]): Promise<number[]> {
  const before = pids.map(processCpuSeconds);
  const started = performance.now();
  await new Promise((resolve) => setTimeout(resolve, IDLE_SECONDS * 1000));
  const seconds = (performance.now() - started) / 1000;
  return pids.map((pid, index) => ((processCpuSeconds(pid) - (before[index] ?? 0)) / seconds) * 100);
}

/** Two phases' figures as one (activations and deactivations: the transitions). */
function together(first: PhaseResult, second: PhaseResult): PhaseResult {
  const done = first.done + second.done;
  const mean = (a: number | undefined, b: number | undefined) =>
    ((a ?? Number.NaN) * first.done + (b ?? Number.NaN) * second.done) / done;
  const [a, b] = [first.cpuSplit, second.cpuSplit];
  return {
    done,
    seconds: first.seconds + second.seconds,
    perSecond: done / (first.seconds + second.seconds),
    p99Ms: Math.max(first.p99Ms, second.p99Ms),
    cpuUsPerCall: mean(first.cpuUsPerCall, second.cpuUsPerCall),
    cpuSplit:
      a === undefined || b === undefined
        ? undefined
        : {
            replicas: a.replicas.map((value, index) => mean(value, b.replicas[index])),
            reads: mean(a.reads, b.reads),
            writes: mean(a.writes, b.writes),
            wakeUps: mean(a.wakeUps, b.wakeUps),
            client: mean(a.client, b.client),
            database: mean(a.database, b.database),
            machine: mean(a.machine, b.machine),
          },
  };
}

function p99(latencies: number[]): number {
  latencies.sort((a, b) => a - b);
  return latencies[Math.min(latencies.length - 1, Math.ceil(latencies.length * 0.99) - 1)] ?? Number.NaN;
}

/**
 * `IN_FLIGHT` calls at all times, over `items` in order, until they run out (or, with `cycle`, over
 * and over) or `seconds` pass.
 */
async function closedLoop<T>(
  items: readonly T[],
  seconds: number,
  call: (item: T) => Promise<void>,
  cycle = false,
): Promise<PhaseResult> {
  const started = performance.now();
  const until = started + seconds * 1000;
  const latencies: number[] = [];
  let index = 0;
  await Promise.all(
    Array.from({ length: IN_FLIGHT }, async () => {
      while ((cycle || index < items.length) && performance.now() < until) {
        const item = items[index++ % items.length] as T;
        const sent = performance.now();
        await call(item);
        latencies.push(performance.now() - sent);
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  return { done: latencies.length, seconds: elapsed, perSecond: latencies.length / elapsed, p99Ms: p99(latencies) };
}

/** `rate` calls a second on a schedule (not waiting for answers), for `seconds`. */
async function openLoop<T>(
  items: readonly T[],
  rate: number,
  seconds: number,
  call: (item: T) => Promise<void>,
): Promise<PhaseResult> {
  const started = performance.now();
  const total = Math.min(items.length, Math.floor(rate * seconds));
  const latencies: number[] = [];
  const calls: Promise<void>[] = [];
  let sent = 0;
  while (sent < total) {
    const due = Math.min(total, Math.floor(((performance.now() - started) / 1000) * rate) + 1);
    for (; sent < due; sent++) {
      const dueAt = started + (sent / rate) * 1000;
      calls.push(call(items[sent] as T).then(() => void latencies.push(performance.now() - dueAt)));
    }
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  await Promise.all(calls);
  const elapsed = (performance.now() - started) / 1000;
  return { done: latencies.length, seconds: elapsed, perSecond: latencies.length / elapsed, p99Ms: p99(latencies) };
}

interface Pair {
  readonly source: string;
  readonly destination: string;
}

interface Created extends Pair {
  readonly id: string;
}

/** Every ordered pair of the organizations, shuffled: each CreateConnection gets one never used. */
function pairs(organizations: readonly string[]): Pair[] {
  const all: Pair[] = [];
  for (const source of organizations) {
    for (const destination of organizations) if (source !== destination) all.push({ source, destination });
  }
  for (let index = all.length - 1; index > 0; index--) {
    const other = Math.floor(Math.random() * (index + 1));
    [all[index], all[other]] = [all[other] as Pair, all[index] as Pair];
  }
  return all;
}

const nowUs = () => Number(process.hrtime.bigint() / 1000n);

interface WriteFigures {
  readonly label: string;
  /** Each replica's CPU without calls, in % of a core. */
  readonly idle: readonly number[];
  /** Summaries of the first service's CPU profile over the measured creates and transitions, when profiled. */
  readonly profiles: { readonly creates: readonly string[]; readonly transitions: readonly string[] };
  readonly creates: PhaseResult;
  readonly transitions: PhaseResult;
  readonly checks: PhaseResult;
  readonly halfLoad: PhaseResult;
  /**
   * The p99 of the half-load creates as the services logged them (durationMs: from the pipeline's
   * start to its answer, without the transport or the client); NaN when nothing was logged.
   */
  readonly halfLoadServiceP99Ms: number;
  readonly createGoal: number;
}

/** The phases against one deployment (its replicas' URLs). */
async function measure(
  label: string,
  urls: readonly string[],
  pids: readonly number[],
  tokens: Tokens,
  options: WritesOptions,
) {
  const client = await Client.open(urls);
  const as = (caller: keyof Tokens, organizationId?: string, actor = "user:usr_bench") => ({
    authorization: `Bearer ${tokens[caller]}`,
    "x-actor": actor,
    ...(organizationId === undefined ? {} : { "x-organization-id": organizationId }),
  });
  try {
    // What the replicas use with no call at all (timers, pollers, connections): not counted per call.
    const idle = await idleCpu(pids);
    const run = randomBytes(3).toString("hex");
    const organizations = Array.from({ length: ORGANIZATIONS }, (_, index) => `org_w${run}_${index}`);
    options.progress(`  ${label}: registering ${ORGANIZATIONS} organizations`);
    await closedLoop(organizations, 600, async (id) => {
      const body = toBinary(CreateOrganizationRequestSchema, create(CreateOrganizationRequestSchema, { id, name: id }));
      const answer = await client.call(
        "createOrganization",
        as("provisioning"),
        body,
        CreateOrganizationResponseSchema,
      );
      if (answer.organization?.id !== id) throw new Error(`CreateOrganization answered ${answer.organization?.id}`);
    });
    const free = pairs(organizations);
    const createCall = async (pair: Pair): Promise<Created> => {
      const request = create(CreateConnectionRequestSchema, {
        destinationOrganizationId: pair.destination,
        scopes: [SCOPE],
        name: "Bench write",
        requestId: `w-${pair.source}-${pair.destination}`,
      });
      const { connection } = await client.call(
        "create",
        as("api-gateway", pair.source),
        toBinary(CreateConnectionRequestSchema, request),
        CreateConnectionResponseSchema,
      );
      if (
        connection?.state !== Connection_State.PENDING ||
        connection.sourceOrganizationId !== pair.source ||
        connection.destinationOrganizationId !== pair.destination
      ) {
        throw new Error(`CreateConnection answered a wrong Connection for ${pair.source} -> ${pair.destination}`);
      }
      return { ...pair, id: connection.id };
    };

    let used = 0;
    const take = (count: number) => {
      const taken = free.slice(used, used + count);
      used += taken.length;
      return taken;
    };
    const transition = async (kind: "activate" | "deactivate", connection: Created) => {
      const answer =
        kind === "activate"
          ? await client.call(
              "activate",
              as("dashboard-bff", connection.destination),
              toBinary(ActivateConnectionRequestSchema, create(ActivateConnectionRequestSchema, { id: connection.id })),
              ActivateConnectionResponseSchema,
            )
          : await client.call(
              "deactivate",
              as("api-gateway", connection.source),
              toBinary(
                DeactivateConnectionRequestSchema,
                create(DeactivateConnectionRequestSchema, { id: connection.id, reason: "bench" }),
              ),
              DeactivateConnectionResponseSchema,
            );
      const expected = kind === "activate" ? Connection_State.ACTIVE : Connection_State.INACTIVE;
      if (answer.connection?.id !== connection.id || answer.connection.state !== expected) {
        throw new Error(`${kind} of ${connection.id} answered state ${answer.connection?.state}`);
      }
    };
    const check = async (connection: Created) => {
      const request = create(CheckConnectionRequestSchema, {
        connectionId: connection.id,
        organizationId: connection.source,
        action: CheckConnectionRequest_Action.ISSUE_SHARE_TOKEN,
        scope: SCOPE,
      });
      const answer = await client.call(
        "check",
        as("token-service"),
        toBinary(CheckConnectionRequestSchema, request),
        CheckConnectionResponseSchema,
      );
      if (answer.reason !== CheckConnectionResponse_Reason.ALLOWED) {
        throw new Error(`CheckConnection of ${connection.id} answered reason ${answer.reason}`);
      }
    };
    // Warm-up, unmeasured: every RPC of the run, WARM_UP_CALLS of each per replica, so that each
    // replica's JIT has compiled what the phases run (a replica compiles its code on the calls it
    // serves: a warm-up of a fixed count for all replicas left three replicas compiling through
    // the measured phases), and the database's caches have seen writes.
    options.progress(`  ${label}: warming up`);
    const warmUp = WARM_UP_CALLS * urls.length;
    const warmCreated: Created[] = [];
    await closedLoop(take(warmUp), 600, async (pair) => void warmCreated.push(await createCall(pair)));
    await closedLoop(warmCreated, 600, (connection) => transition("activate", connection));
    await closedLoop(warmCreated, 600, check);
    await closedLoop(warmCreated, 600, (connection) => transition("deactivate", connection));

    options.progress(`  ${label}: CreateConnection`);
    const created: Created[] = [];
    const creatable = take(60_000);
    const createsFrom = nowUs();
    const creates = await withCpu(pids, () =>
      closedLoop(creatable, options.seconds, async (pair) => {
        created.push(await createCall(pair));
      }),
    );
    const createsWindow = [createsFrom, nowUs()] as const;
    used -= creatable.length - creates.done;

    options.progress(`  ${label}: Activate, then Deactivate, what was created`);
    const activationsFrom = nowUs();
    const activations = await withCpu(pids, () =>
      closedLoop(created, options.seconds, (connection) => transition("activate", connection)),
    );
    const activationsWindow = [activationsFrom, nowUs()] as const;
    const active = created.slice(0, activations.done);

    options.progress(`  ${label}: CheckConnection of the active ones`);
    // Over and over: a check changes nothing. (Not a list of millions of checks: the client's own
    // full garbage collections, marking it, held every call in flight for 50 ms and more.)
    const checks = await withCpu(pids, () => closedLoop(active, options.seconds, check, true));

    const deactivationsFrom = nowUs();
    const deactivations = await withCpu(pids, () =>
      closedLoop(active, options.seconds, (connection) => transition("deactivate", connection)),
    );
    const transitionWindows = [activationsWindow, [deactivationsFrom, nowUs()] as const];
    const transitions = together(activations, deactivations);

    options.progress(`  ${label}: CreateConnection at half that rate, on a schedule`);
    const halfRate = HALF_LOAD_RATE ?? creates.perSecond / 2;
    const halfLoadFrom = Date.now();
    const halfLoad = await withCpu(pids, () =>
      openLoop(take(Math.ceil(halfRate * options.seconds)), halfRate, options.seconds, async (pair) => {
        await createCall(pair);
      }),
    );
    const failures = Object.entries(client.errors.counts);
    if (failures.length > 0) throw new Error(`${label}: transport failures ${JSON.stringify(failures)}`);
    if (client.errors.refusedStreamsRetried > 0) {
      options.progress(`  ${label}: ${client.errors.refusedStreamsRetried} calls sent again after REFUSED_STREAM`);
    }
    const halfLoadWindow = [halfLoadFrom, Date.now()] as const;
    return { idle, creates, transitions, checks, halfLoad, halfLoadWindow, createsWindow, transitionWindows };
  } finally {
    client.close();
  }
}

/**
 * The durationMs of the OK CreateConnection calls that the services' log files record as ended
 * within `window` (epoch ms): what the service itself took, beside what the client saw.
 */
function loggedCreateMs(logPaths: readonly string[], window: readonly [number, number]): number[] {
  const durations: number[] = [];
  for (const path of logPaths) {
    for (const line of readFileSync(path, "utf8").split("\n")) {
      if (!line.includes(PATHS.create)) continue;
      const { time = 0, code, durationMs } = JSON.parse(line) as { time?: number; code?: string; durationMs?: number };
      if (code === "OK" && durationMs !== undefined && time >= window[0] && time <= window[1])
        durations.push(durationMs);
    }
  }
  return durations;
}

/** Runs one statement on a connection of its own (CREATE and DROP DATABASE cannot share one). */
export async function adminStatement(adminUrl: string, statement: string): Promise<void> {
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    await client.query(statement);
  } finally {
    await client.end();
  }
}

async function postgresDatabase(adminUrl: string): Promise<string> {
  const name = `connections_bench_writes_${randomBytes(6).toString("hex")}`;
  const admin = (statement: string) => adminStatement(adminUrl, statement);
  await admin(`CREATE DATABASE ${name}`);
  onCleanUp(`database ${name}`, () => admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`));
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

/** Runs the section and prints its table. The service must be built (dist/). */
export async function runWritesBench(options: WritesOptions): Promise<void> {
  const callers = writeProductionCallers(options.workDir, "writes-callers.json", [
    "provisioning",
    "dashboard-bff",
    "api-gateway",
    "token-service",
  ] as const);
  const profileDir = (name: string) => {
    if (options.cpuProfileDir === undefined) return undefined;
    const dir = join(options.cpuProfileDir, `writes-${name}`);
    mkdirSync(dir, { recursive: true });
    return dir;
  };
  const start = (name: string, databaseUrl: string) =>
    startService({
      databaseUrl,
      logLevel: options.logLevel,
      callersFile: callers.path,
      logPath: join(options.workDir, `service-writes-${name}.log`),
      cpuProfileDir: profileDir(name),
      // A fresh database and no separate migrate step: the replicas migrate it as they start
      // (production PostgreSQL defaults MIGRATE_ON_START to false).
      env: { MIGRATE_ON_START: "true" },
    });
  const figures: WriteFigures[] = [];
  const deploy = async (name: string, label: string, createGoal: number, replicas: () => Promise<StartedService[]>) => {
    options.progress(`writes: ${label}`);
    const servers = await replicas();
    let measured: Awaited<ReturnType<typeof measure>>;
    try {
      const urls = servers.map((server) => `http://127.0.0.1:${server.port}`);
      const pids = servers.map((server) => server.pid);
      measured = await measure(label, urls, pids, callers.tokens, options);
    } finally {
      for (const server of servers) await server.stop();
    }
    // The profile is written when the process exits.
    const dir = options.cpuProfileDir === undefined ? undefined : join(options.cpuProfileDir, `writes-${name}`);
    const file = dir === undefined ? undefined : readdirSync(dir).find((entry) => entry.endsWith(".cpuprofile"));
    const summary = (windows: readonly (readonly [number, number])[]) =>
      dir === undefined || file === undefined ? [] : summariseProfile(join(dir, file), windows);
    const profiles = { creates: summary([measured.createsWindow]), transitions: summary(measured.transitionWindows) };
    // Read once the services have stopped: every line is written by then.
    const logPaths = servers.map((server) => server.logPath);
    const halfLoadServiceP99Ms = p99(loggedCreateMs(logPaths, measured.halfLoadWindow));
    figures.push({ label, createGoal, profiles, halfLoadServiceP99Ms, ...measured });
  };
  if (options.deployments.has("sqlite")) {
    await deploy("sqlite", "SQLite, one service, every write flushed", GOALS.sqliteCreates, async () => [
      await start("sqlite", `sqlite:${join(options.workDir, "writes.db")}`),
    ]);
  }
  if (options.deployments.has("postgres") && options.postgresAdminUrl === undefined) {
    options.progress("writes: PostgreSQL skipped (set BENCH_DATABASE_URL)");
  } else if (options.deployments.has("postgres") && options.postgresAdminUrl !== undefined) {
    const url = await postgresDatabase(options.postgresAdminUrl);
    // The first replica migrates; the others start on the migrated database.
    const replicas = options.postgresReplicas;
    await deploy(
      "postgres",
      `PostgreSQL, ${replicas} replica${replicas === 1 ? "" : "s"}`,
      GOALS.postgresCreates,
      async () => {
        const first = await start("postgres", url);
        const rest = await Promise.all(
          Array.from({ length: replicas - 1 }, (_, index) => start(`postgres-${index + 1}`, url)),
        );
        return [first, ...rest];
      },
    );
  }
  print(figures, options);
}

function print(figures: readonly WriteFigures[], options: WritesOptions): void {
  const { log } = options;
  const count = (value: number) => Math.round(value).toLocaleString("en-US");
  log();
  log(
    `Writes over gRPC by the bench's node:http2 client, ${IN_FLIGHT} in flight, ${options.seconds} s per phase, every ` +
      "answer decoded and checked: CreateConnection of unique pairs (after a 2 s warm-up); Activate, then Deactivate, " +
      "of the Connections created (transitions/s over both); CheckConnection of the active ones from the same client; " +
      "then CreateConnection sent on a schedule at half the measured rate (p99 from when each call was due; " +
      "'service p99', of the same calls as the services' log lines time them: from the pipeline's start to its " +
      "answer, without the transport and the client). " +
      "'CPU us' is the services' CPU time per answer (every replica, not the database), from /proc; 'by CPU' is " +
      "creates over checks by that cost (check CPU over create CPU), which holds when other work shares the machine",
  );
  const rows = figures.map((figure) => [
    figure.label,
    count(figure.creates.perSecond),
    figure.creates.p99Ms.toFixed(1),
    count(figure.transitions.perSecond),
    count(figure.checks.perSecond),
    `${(figure.creates.perSecond / figure.checks.perSecond).toFixed(2)}x`,
    count(figure.creates.cpuUsPerCall ?? Number.NaN),
    count(figure.transitions.cpuUsPerCall ?? Number.NaN),
    count(figure.checks.cpuUsPerCall ?? Number.NaN),
    `${((figure.checks.cpuUsPerCall ?? Number.NaN) / (figure.creates.cpuUsPerCall ?? Number.NaN)).toFixed(2)}x`,
    `${count(figure.halfLoad.perSecond)}/s`,
    figure.halfLoad.p99Ms.toFixed(1),
    Number.isNaN(figure.halfLoadServiceP99Ms) ? "-" : figure.halfLoadServiceP99Ms.toFixed(1),
  ]);
  const headers = [
    "deployment",
    "creates/s",
    "create p99 ms",
    "transitions/s",
    "checks/s",
    "creates/checks",
    "CPU us/create",
    "CPU us/transition",
    "CPU us/check",
    "by CPU",
    "half load",
    "half-load p99 ms",
    "service p99 ms",
  ];
  table(headers, rows);
  for (const figure of figures) {
    const met = (ok: boolean) => (ok ? "met" : "MISSED");
    log(
      `  ${figure.label}: creates ${count(figure.creates.perSecond)}/s (goal >= ${count(figure.createGoal)}): ` +
        `${met(figure.creates.perSecond >= figure.createGoal)}; creates/checks ` +
        `${(figure.creates.perSecond / figure.checks.perSecond).toFixed(2)}x (goal >= ${GOALS.createsVsChecks}x): ` +
        `${met(figure.creates.perSecond / figure.checks.perSecond >= GOALS.createsVsChecks)}; p99 at half load ` +
        `${figure.halfLoad.p99Ms.toFixed(1)} ms (goal <= ${GOALS.p99HalfLoadMs} ms): ` +
        `${met(figure.halfLoad.p99Ms <= GOALS.p99HalfLoadMs)}`,
    );
  }
  log();
  log(
    "Where the CPU went, in microseconds per call: each replica (from /proc), the bench's own process (the " +
      "client), PostgreSQL (every process of the server, background ones included) and the whole machine; the " +
      "replicas' read and write system calls and event-loop wake-ups (voluntary context switches) per call; idle: " +
      `each replica's CPU over ${IDLE_SECONDS} s before the first call, in % of a core`,
  );
  const list = (values: readonly number[]) => values.map(count).join(" + ");
  table(
    [
      "deployment",
      "phase",
      "replicas",
      "client",
      "PostgreSQL",
      "machine",
      "reads",
      "writes",
      "wake-ups",
      "replicas idle",
    ],
    figures.flatMap((figure) =>
      (["creates", "transitions", "checks", "halfLoad"] as const).map((phase) => {
        const split = figure[phase].cpuSplit;
        return [
          figure.label,
          phase === "halfLoad" ? `creates at ${count(figure.halfLoad.perSecond)}/s` : phase,
          split === undefined ? "" : list(split.replicas),
          split === undefined ? "" : count(split.client),
          split === undefined ? "" : count(split.database),
          split === undefined ? "" : count(split.machine),
          split === undefined ? "" : split.reads.toFixed(1),
          split === undefined ? "" : split.writes.toFixed(1),
          split === undefined ? "" : split.wakeUps.toFixed(1),
          figure.idle.map((value) => `${value.toFixed(1)}%`).join(" "),
        ];
      }),
    ),
  );
  for (const figure of figures) {
    for (const [phase, lines] of Object.entries(figure.profiles)) {
      if (lines.length === 0) continue;
      log();
      log(`CPU profile of the ${figure.label} service (the first replica) over its measured ${phase}`);
      for (const line of lines) log(`  ${line}`);
    }
  }
}
