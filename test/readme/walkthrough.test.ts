// Runs the README's walkthrough, command by command as written, against a real server, so that
// the documentation cannot drift from the service. Only the port is changed.

import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { promisify } from "node:util";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config.js";
import { type RunningService, startService } from "../../src/server.js";

const run = promisify(execFile);
const README = readFileSync(new URL("../../README.md", import.meta.url), "utf8");

/** The walkthrough's shell commands, each with what it should print or how it should fail. */
function walkthroughCommands(): { command: string; expect?: string; fails?: string }[] {
  const section = README.split("<!-- walkthrough:start -->")[1]?.split("<!-- walkthrough:end -->")[0];
  if (section === undefined) throw new Error("README.md has no walkthrough markers");
  const lines = [...section.matchAll(/```sh\n([\s\S]*?)```/g)].flatMap((block) => (block[1] ?? "").split("\n"));
  return lines
    .filter((line) => line.trim() !== "")
    .map((line) => {
      const annotated = /^(.*?)\s+#\s*(expect|fails):\s*(.*)$/.exec(line);
      if (annotated === null) return { command: line };
      const [, command = "", kind, text] = annotated;
      return kind === "expect" ? { command, expect: text } : { command, fails: text };
    });
}

/** One bash script, so that variables like $CXN carry from one command to the next. */
function script(port: number): string {
  const quote = (text: string) => `'${text.replaceAll("'", "'\\''")}'`;
  const steps = walkthroughCommands().map(({ command, expect, fails }) => {
    const local = command.replaceAll("127.0.0.1:8080", `127.0.0.1:${port}`);
    const shown = quote(command);
    if (fails !== undefined) {
      return `if out=$(${local} 2>&1); then echo "unexpected success: "${shown}; exit 1; fi
grep -qF ${quote(fails)} <<<"$out" || { echo "expected failure "${quote(fails)}" from "${shown}", got: $out"; exit 1; }`;
    }
    if (expect !== undefined) {
      return `out=$(${local}) || { echo "failed: "${shown}; exit 1; }
grep -qF ${quote(expect)} <<<"$out" || { echo "expected "${quote(expect)}" from "${shown}", got: $out"; exit 1; }`;
    }
    return `${local} || { echo "failed: "${shown}; exit 1; }`;
  });
  return `set -uo pipefail\n${steps.join("\n")}\necho walkthrough-ok\n`;
}

describe("README walkthrough", () => {
  let service: RunningService;

  beforeAll(async () => {
    const config = loadConfig({ PORT: "0", ADMIN_PORT: "off", DATABASE_URL: "sqlite::memory:", LOG_LEVEL: "silent" });
    service = await startService(config, pino({ level: "silent" }));
  });

  afterAll(async () => {
    await service?.close();
  });

  it("has commands that say what they print or how they fail", () => {
    const commands = walkthroughCommands();
    expect(commands.length).toBeGreaterThanOrEqual(10);
    expect(commands.filter((command) => command.fails !== undefined).length).toBeGreaterThanOrEqual(2);
  });

  it("runs as written against a real server", { timeout: 120_000 }, async () => {
    const { stdout } = await run("bash", ["-c", script(service.port)], {
      cwd: new URL("../..", import.meta.url).pathname,
    }).catch((error: { stdout?: string; stderr?: string }) => {
      throw new Error(`walkthrough failed:\n${error.stdout ?? ""}\n${error.stderr ?? ""}`);
    });
    expect(stdout).toContain("walkthrough-ok");
  });

  it("answers the plain curl example over HTTP/1.1 Connect JSON (after the walkthrough registered org_acme)", async () => {
    const curl = /```sh\n(curl -s [^\n]*GetOrganization)\n```/.exec(README)?.[1];
    expect(curl).toBeDefined();
    const { stdout } = await run("bash", ["-c", (curl ?? "").replace("127.0.0.1:8080", `127.0.0.1:${service.port}`)]);
    expect(JSON.parse(stdout)).toMatchObject({ organization: { id: "org_acme", name: "Acme" } });
  });
});
