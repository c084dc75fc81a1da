// deploy/ as an operator takes it: the Kubernetes manifests validate against the Kubernetes schemas
// (kubernetes-models) and carry what a fleet needs (probes, preStop, a disruption budget, resources,
// non-root, a migration Job); the Prometheus alerts pass `promtool check rules` and their own
// `promtool test rules`; alerts and the Grafana dashboard name only series the service exports; and
// every alert has its runbook entry in docs/operations.md.

import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Deployment } from "kubernetes-models/apps/v1/Deployment";
import { Job } from "kubernetes-models/batch/v1/Job";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1/PodDisruptionBudget";
import { Service } from "kubernetes-models/v1/Service";
import { describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import { loadConfig } from "../../src/config/config.js";
import { Metrics } from "../../src/observability/metrics.js";

const ROOT = new URL("../..", import.meta.url).pathname;
const DEPLOY = join(ROOT, "deploy");

/** The models of the kinds deploy/kubernetes holds; another kind fails the test until added here. */
const MODELS: Record<string, new (data: never) => { validate(): void }> = {
  "apps/v1/Deployment": Deployment,
  "batch/v1/Job": Job,
  "v1/Service": Service,
  "policy/v1/PodDisruptionBudget": PodDisruptionBudget,
};

interface Manifest {
  readonly file: string;
  readonly apiVersion: string;
  readonly kind: string;
  // biome-ignore lint/suspicious/noExplicitAny: a manifest is whatever the YAML says; the schema checks it.
  readonly body: any;
}

function manifests(): Manifest[] {
  const directory = join(DEPLOY, "kubernetes");
  return readdirSync(directory)
    .filter((file) => file.endsWith(".yaml"))
    .flatMap((file) =>
      parseAllDocuments(readFileSync(join(directory, file), "utf8")).map((document) => {
        const body = document.toJS();
        return { file, apiVersion: body.apiVersion, kind: body.kind, body };
      }),
    );
}

function one(kind: string): Manifest {
  const found = manifests().filter((manifest) => manifest.kind === kind);
  expect(found, kind).toHaveLength(1);
  return found[0] as Manifest;
}

const promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"].find((path) => existsSync(path));
if (promtool === undefined) console.info("promtool checks skipped: apt-get install prometheus brings promtool");

describe("Kubernetes manifests", () => {
  it("validate against the Kubernetes schemas", () => {
    const all = manifests();
    expect(all.map((manifest) => manifest.kind).sort()).toEqual([
      "Deployment",
      "Job",
      "PodDisruptionBudget",
      "Service",
    ]);
    for (const manifest of all) {
      const Model = MODELS[`${manifest.apiVersion}/${manifest.kind}`];
      expect(Model, `${manifest.file}: ${manifest.apiVersion} ${manifest.kind}`).toBeDefined();
      expect(
        () => new (Model as NonNullable<typeof Model>)(manifest.body as never).validate(),
        manifest.file,
      ).not.toThrow();
    }
  });

  it("catches a manifest that breaks the schema (the check is not vacuous)", () => {
    const broken = structuredClone(one("Deployment").body);
    broken.spec.template.spec.containers[0].ports[0].containerPort = "eighty";
    expect(() => new Deployment(broken).validate()).toThrow(/containerPort/);
  });

  it("runs the Deployment as a fleet: probes, preStop, spaced rollout, resources, non-root", () => {
    const { spec } = one("Deployment").body;
    const pod = spec.template.spec;
    const container = pod.containers[0];
    expect(container.readinessProbe.grpc).toEqual({ port: 8080 });
    // Liveness asks the health service itself, which answers while the database is down.
    expect(container.livenessProbe.grpc.service).toBe("grpc.health.v1.Health");
    expect(container.lifecycle.preStop).toBeDefined();
    expect(container.resources.requests).toMatchObject({ cpu: expect.any(String), memory: expect.any(String) });
    expect(container.resources.limits.memory).toBeDefined();
    expect(pod.securityContext.runAsNonRoot).toBe(true);
    expect(container.securityContext).toMatchObject({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true });
    expect(spec.strategy.rollingUpdate.maxUnavailable).toBe(0);
    // Spaced past nginx's default fail_timeout (10 s), which a GOAWAY trips.
    expect(spec.minReadySeconds).toBeGreaterThan(10);
    const env = Object.fromEntries(
      container.env.map((entry: { name: string; value?: string }) => [entry.name, entry.value]),
    );
    expect(env.MIGRATE_ON_START).toBe("false");
    // The pod is killed only after preStop, the drain's grace and its overrun allowance.
    const preStopSeconds = 5;
    const drainSeconds = Number(env.SHUTDOWN_GRACE_MS) / 1000 + 5;
    expect(pod.terminationGracePeriodSeconds).toBeGreaterThan(preStopSeconds + drainSeconds);
    // Every literal setting is one the service accepts (secrets stand in as PostgreSQL URLs).
    const secrets = Object.fromEntries(
      container.env
        .filter((entry: { valueFrom?: unknown }) => entry.valueFrom !== undefined)
        .map((entry: { name: string }) => [entry.name, "postgres://connections@db/connections"]),
    );
    expect(() => loadConfig({ ...env, ...secrets })).not.toThrow();
  });

  it("keeps replicas up through disruptions and migrates in a Job", () => {
    const deployment = one("Deployment").body;
    const budget = one("PodDisruptionBudget").body;
    expect(budget.spec.selector.matchLabels).toEqual(deployment.spec.selector.matchLabels);
    expect(budget.spec.maxUnavailable).toBe(1);
    const job = one("Job").body;
    const container = job.spec.template.spec.containers[0];
    expect(container.command).toEqual(["node", "dist/src/main.js", "migrate"]);
    expect(container.image).toBe(deployment.spec.template.spec.containers[0].image);
    expect(job.spec.template.spec.securityContext.runAsNonRoot).toBe(true);
    expect(container.env.map((entry: { name: string }) => entry.name)).toContain("DATABASE_MIGRATION_URL");
  });
});

/** Every series name the service exports (histograms with their suffixes), and Prometheus' own `up`. */
async function exportedSeries(): Promise<Set<string>> {
  const metrics = new Metrics({
    poolStats: () => ({ total: 0, idle: 0, waiting: 0, exhausted: 0 }),
    checkCacheStats: () => ({ hits: 0, misses: 0, evictions: 0, entries: 0 }),
  });
  metrics.countWatchers(() => 0);
  metrics.observeFeed({ stats: () => ({ events: 0, deliveries: 0, pollFallbacks: 0, lagSeconds: 0 }) });
  const names = new Set(["up"]);
  for (const metric of await metrics.registry.getMetricsAsJSON()) {
    names.add(metric.name);
    if (String(metric.type) === "histogram")
      for (const suffix of ["_bucket", "_sum", "_count"]) names.add(metric.name + suffix);
  }
  return names;
}

const referenced = (text: string) => new Set(text.match(/\bconnections_[a-z_]+\b/g) ?? []);

describe("Prometheus alerts and the Grafana dashboard", () => {
  const alerts = readFileSync(join(DEPLOY, "prometheus", "alerts.yml"), "utf8");
  const dashboard = readFileSync(join(DEPLOY, "grafana", "connections.json"), "utf8");
  const alertNames = [...alerts.matchAll(/- alert: (\w+)/g)].map((match) => match[1] as string);

  it.skipIf(promtool === undefined)("pass promtool check rules and promtool test rules", () => {
    for (const args of [
      ["check", "rules", "alerts.yml"],
      ["test", "rules", "alerts.test.yml"],
    ]) {
      const run = spawnSync(promtool as string, args, { cwd: join(DEPLOY, "prometheus"), encoding: "utf8" });
      expect(run.status, `promtool ${args.join(" ")}\n${run.stdout}${run.stderr}`).toBe(0);
    }
  });

  it("name only series the service exports", async () => {
    const exported = await exportedSeries();
    const dashboardExprs = (JSON.parse(dashboard) as { panels: { targets: { expr: string }[] }[] }).panels
      .flatMap((panel) => panel.targets.map((target) => target.expr))
      .join("\n");
    for (const [what, text] of [
      ["alerts.yml", alerts],
      ["connections.json", dashboardExprs],
    ] as const) {
      const unknown = [...referenced(text)].filter((name) => !exported.has(name));
      expect(unknown, what).toEqual([]);
    }
    expect(referenced(dashboardExprs).size).toBeGreaterThan(8);
  });

  it("each alert has a runbook entry in docs/operations.md", () => {
    const runbook = readFileSync(join(ROOT, "docs", "operations.md"), "utf8");
    expect(alertNames.length).toBeGreaterThan(5);
    for (const name of alertNames) {
      expect(runbook, name).toMatch(new RegExp(`^### ${name}$`, "m"));
      expect(alerts).toContain(`runbook: docs/operations.md#${name.toLowerCase()}`);
    }
  });
});
