// `npm run bench`: how fast the service answers, against what Node can do at all. The runner: it
// starts the servers (servers.ts), measures them with the clients (clients.ts), runs the SECTIONS
// below, prints the report (report.ts) and judges it against the goals (config.ts).
//
// Headline (h2load, an independent client): CheckConnection with one request body, against the
// service on SQLite (and on PostgreSQL when BENCH_DATABASE_URL or TEST_DATABASE_URL names a
// server), a @grpc/grpc-js no-op server and node:http2 answering a fixed frame (the ceiling), all
// started once and measured in alternating rounds, so that every ratio compares runs made
// seconds apart. The service runs as deployed: NODE_ENV=production, a callers file of sha256
// digests, its default LOG_LEVEL (BENCH_LOG_LEVEL overrides), metrics on, stdout to a file.
//
// Then the project's own client (load-client.ts) for what h2load cannot do: 100,000 distinct ids
// with the state mix, every answer checked; BatchCheckConnection over the same pool in checks per
// second next to it (batch-check.ts); CreateConnection; ListConnections deep pages; memory.
//
// Prints figures; asserts nothing about time. Fails (exit 1) only when a request failed or an
// answer was wrong. Every process, file and database it made is removed at the end.

import { mkdtemp, rm } from "node:fs/promises";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { CheckConnectionResponse_Reason } from "../gen/connections/v1/connection_service_pb.js";
import {
  type BatchRuns,
  type ClientRunFigures,
  type Headline,
  runBatchChecks,
  runDistinctChecks,
  runHeadline,
  runServiceExtras,
  type ServiceExtras,
} from "./clients.js";
import { config, integer } from "./config.js";
import { frame } from "./grpc-client.js";
import { ensureH2load } from "./h2load.js";
import { overloadScenarios, runOverload } from "./overload.js";
import { buildService, cleanUp, onCleanUp, serverAllocator, statusMiB } from "./processes.js";
import {
  count,
  log,
  printBatches,
  printCpu,
  printDistinct,
  printExtras,
  printGoals,
  printHeadline,
  printMemory,
  printProfiles,
  problems,
  progress,
} from "./report.js";
import { runScale } from "./scale.js";
import type { Bench, Section, SectionOutcome } from "./section.js";
import { startTargets, writeCallersFile } from "./servers.js";
import { runWritesBench } from "./writes.js";

/**
 * Sections run after the check measurements, on the same servers, in this order; each is one file
 * (see section.ts). Add a section with one line here.
 */
const SECTIONS: readonly Section[] = [];

async function main(): Promise<void> {
  const started = performance.now();
  log(
    `machine: ${cpus()[0]?.model ?? "unknown CPU"}, ${cpus().length} cores (nproc); Node ${process.version}; ` +
      `load average ${loadavg()
        .map((value) => value.toFixed(2))
        .join(" ")}`,
  );
  log(
    `data set: ${count(config.connections)} connections, ${count(config.organizations)} regular organizations plus ` +
      `one big organization with ${count(config.bigOrganizationConnections)} connections (half each way, one leaf organization per two)`,
  );
  log(
    `service: NODE_ENV=production, a CALLERS_FILE of sha256 digests, LOG_LEVEL=${config.logLevel ?? "its default"}, ` +
      "metrics on, stdout to a file; each client runs in its own process",
  );
  log(`allocator of every server: ${serverAllocator(progress).description}`);
  const workDir = await mkdtemp(join(tmpdir(), "connections-bench-"));
  onCleanUp("work directory", () => rm(workDir, { recursive: true, force: true }));
  const credentials = writeCallersFile(workDir);
  const targets = await startTargets(workDir, credentials);
  const bench: Bench = { workDir, credentials, targets };

  let headline: Headline | undefined;
  if (config.h2load && targets.some((target) => target.service !== undefined)) {
    progress("headline: h2load, alternating rounds");
    headline = await runHeadline(bench);
  }
  let distinct = new Map<string, ClientRunFigures[]>();
  let batches = new Map<string, BatchRuns>();
  const extras = new Map<string, ServiceExtras>();
  if (config.ownClient) {
    progress("own client: distinct ids, alternating rounds");
    distinct = await runDistinctChecks(bench);
    progress("own client: BatchCheckConnection, alternating rounds");
    batches = await runBatchChecks(bench);
    for (const target of targets) {
      if (target.service !== undefined && target.name !== "compare") {
        extras.set(target.name, await runServiceExtras(bench, target));
      }
    }
  }
  const sections: SectionOutcome[] = [];
  for (const section of SECTIONS) {
    progress(`section: ${section.name}`);
    sections.push(await section.run(bench));
  }
  const peakRss = targets.map((target) => [target.label, statusMiB(target.server.pid, "VmHWM")] as const);
  const verdicts: string[] = [];
  const overloaded = targets.find((target) => target.name === "sqlite");
  if (config.overload && overloaded?.service !== undefined) {
    const { checks, seed } = overloaded.service;
    const allowed = checks.find((check) => check.expectReason === CheckConnectionResponse_Reason.ALLOWED);
    const connection = seed.dataset.connections.find((candidate) => candidate.state === "ACTIVE");
    if (allowed === undefined || connection === undefined)
      throw new Error("overload: the data set has no ACTIVE Connection");
    const scenarios = overloadScenarios(credentials, frame(Buffer.from(allowed.body, "base64")), connection);
    const inputs = { url: overloaded.url, pid: overloaded.server.pid, h2load: ensureH2load(progress), workDir };
    verdicts.push(...(await runOverload({ ...inputs, scenarios, ...config.overloadSeconds }, log, progress)));
  }
  for (const target of targets) await target.server.stop();
  // Its own services and data set, after the others have stopped (bench/scale.ts).
  if (config.targets.has("scale")) {
    verdicts.push(
      ...(await runScale({
        workDir,
        callersFile: credentials.path,
        headers: credentials.tokenService,
        log,
        progress,
        integer,
      })),
    );
  }

  if (headline !== undefined) verdicts.push(...printHeadline(targets, headline));
  if (config.ownClient) verdicts.push(...printDistinct(targets, distinct), ...printBatches(targets, distinct, batches));
  printExtras(targets, extras);
  for (const section of sections) {
    section.print();
    verdicts.push(...section.verdicts);
  }
  printCpu(targets, headline, distinct, batches);
  printMemory(targets, peakRss);
  printProfiles(targets, headline, distinct);
  if (config.writes) {
    if (!targets.some((target) => target.service !== undefined)) buildService();
    const { logLevel, postgresAdminUrl, seconds, cpuProfileDir, writesDeployments: deployments } = config;
    await runWritesBench({
      workDir,
      postgresAdminUrl,
      logLevel,
      seconds,
      log,
      progress,
      cpuProfileDir,
      deployments,
      postgresReplicas: config.writesReplicas,
    });
  }
  printGoals(
    verdicts,
    [...(headline?.runs.values() ?? []), ...distinct.values(), ...[...batches.values()].map((batch) => batch.runs)]
      .flat()
      .map(({ cpu }) => cpu),
  );
  log();
  log(
    `done in ${((performance.now() - started) / 1000).toFixed(0)} s; load average ${loadavg()
      .map((value) => value.toFixed(2))
      .join(" ")}`,
  );
  const failures = [
    ...problems(headline, distinct, batches, extras),
    ...sections.flatMap((section) => section.problems),
  ];
  if (failures.length > 0) {
    log();
    log("FAILED: requests failed or answers were wrong:");
    for (const line of failures) log(`  ${line}`);
    process.exitCode = 1;
  }
}

let interrupted = false;
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    if (interrupted) process.exit(130);
    interrupted = true;
    progress(`\n${signal}: stopping everything and cleaning up`);
    void cleanUp().finally(() => process.exit(130));
  });
}

try {
  await main();
} catch (error) {
  process.exitCode = 1;
  if (!interrupted)
    progress(`bench failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
} finally {
  await cleanUp();
}
