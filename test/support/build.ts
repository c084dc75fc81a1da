// vitest globalSetup: brings dist/ (`npm run build`) up to date before any suite starts. The suites
// that start the service as a process run the built code, as production does, which starts in a
// fraction of the CPU time the sources take through tsx (and the suites start many processes).
// tsc builds incrementally: with nothing changed it rewrites nothing, so the `npm start` suite's
// own build cannot replace a file that another suite's process is reading.

import { execFile } from "node:child_process";
import { createRequire } from "node:module";
import { promisify } from "node:util";

const ROOT = new URL("../..", import.meta.url).pathname;

export default async function build(): Promise<void> {
  const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
  try {
    await promisify(execFile)(process.execPath, [tsc, "-p", "tsconfig.build.json"], { cwd: ROOT });
  } catch (error) {
    const { stdout = "", stderr = "" } = error as { stdout?: string; stderr?: string };
    throw new Error(`the build the process suites run (tsc -p tsconfig.build.json) failed:\n${stdout}${stderr}`);
  }
}
