// Runs the README's walkthrough, command by command as written, against a real server, so that
// the documentation cannot drift from the service. Only the port is changed, and `npx buf` runs
// the same buf as node_modules/.bin/buf: npx's own start-up, per command, was most of this test's time.

import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { promisify } from "node:util";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningService, startService } from "../../src/composition/start-service.js";
import { loadConfig } from "../../src/config/config.js";

const run = promisify(execFile);
/** The buf that `npx buf` runs here. */
const BUF = new URL("../../node_modules/.bin/buf", import.meta.url).pathname;
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
    const local = command.replaceAll("127.0.0.1:8080", `127.0.0.1:${port}`).replaceAll("npx buf ", `${BUF} `);
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

function runScript(text: string) {
  return run("bash", ["-c", text], { cwd: new URL("../..", import.meta.url).pathname }).catch(
    (error: { stdout?: string; stderr?: string }) => {
      throw new Error(`walkthrough failed:\n${error.stdout ?? ""}\n${error.stderr ?? ""}`);
    },
  );
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

  it("runs as written against a real server, and again on the same database", { timeout: 240_000 }, async () => {
    for (let run = 0; run < 2; run++) {
      const { stdout } = await runScript(script(service.port));
      expect(stdout).toContain("walkthrough-ok");
    }
  });

  it("takes the address from one variable", () => {
    const commands = walkthroughCommands().map(({ command }) => command);
    expect(commands[0]).toBe("ADDR=http://127.0.0.1:8080");
    expect(commands.slice(1).filter((command) => command.includes("127.0.0.1"))).toEqual([]);
  });
});
