// Runs the README's change-feed example as written (only the port changed): `buf curl` follows the
// feed in one shell while the other deactivates a Connection, and the first shell prints the event.

import { type ChildProcess, execFile, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { promisify } from "node:util";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningService, startService } from "../../src/composition/start-service.js";
import { loadConfig } from "../../src/config/config.js";
import { connect } from "../support/fixtures.js";
import { GrpcJsRpcClient } from "../support/service.js";

const run = promisify(execFile);
const README = readFileSync(new URL("../../README.md", import.meta.url), "utf8");
const ROOT = new URL("../..", import.meta.url).pathname;

function exampleCommands(): string[] {
  const section = README.split("<!-- feed-example:start -->")[1]?.split("<!-- feed-example:end -->")[0];
  if (section === undefined) throw new Error("README.md has no feed-example markers");
  return [...section.matchAll(/```sh\n([\s\S]*?)```/g)].map((block) => (block[1] ?? "").trim());
}

describe("README change-feed example", () => {
  let service: RunningService;
  let follower: ChildProcess | undefined;

  beforeAll(async () => {
    const config = loadConfig({ PORT: "0", ADMIN_PORT: "off", DATABASE_URL: "sqlite::memory:", LOG_LEVEL: "silent" });
    service = await startService(config, pino({ level: "silent" }));
  });

  afterAll(async () => {
    // The follower runs until interrupted, as in a shell; it was started in its own process group.
    if (follower?.pid !== undefined && follower.exitCode === null) process.kill(-follower.pid, "SIGTERM");
    await service?.close();
  });

  it("prints the deactivation that another shell makes", { timeout: 120_000 }, async () => {
    const [follow = "", deactivate = ""] = exampleCommands();
    const local = (command: string) => command.replaceAll("127.0.0.1:8080", `127.0.0.1:${service.port}`);
    const client = new GrpcJsRpcClient(`127.0.0.1:${service.port}`);
    const [acme, globex] = ["org_acme_feed", "org_globex_feed"] as const;
    for (const id of [acme, globex]) {
      await client.as({ caller: "provisioning" }).createOrganization({ id, name: id });
    }
    const connection = await connect(client, acme, globex, { state: "ACTIVE" });
    await client.close();

    let printed = "";
    follower = spawn("bash", ["-c", local(follow)], { cwd: ROOT, detached: true, stdio: ["ignore", "pipe", "pipe"] });
    follower.stdout?.on("data", (chunk: Buffer) => {
      printed += chunk.toString();
    });
    const waitFor = async (text: string) => {
      for (let attempt = 0; attempt < 1200 && !printed.includes(text); attempt++) {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      expect(printed).toContain(text);
    };
    await waitFor('"cursor"');

    // The walkthrough's shell variables, as its first commands set them.
    const walkthroughShell = { ADDR: `http://127.0.0.1:${service.port}`, ACME: acme, CXN: connection.id };
    const { stdout } = await run("bash", ["-c", local(deactivate)], {
      cwd: ROOT,
      env: { ...process.env, ...walkthroughShell },
    });
    expect(stdout).toContain("STATE_INACTIVE");
    await waitFor("TYPE_DEACTIVATED");
    expect(printed).toContain(connection.id);
    expect(printed).toContain('"reason": "audit"');
  });
});
