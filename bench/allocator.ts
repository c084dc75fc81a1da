// The memory allocator the container image runs node with: jemalloc, preloaded (Dockerfile). The
// settings are read from the Dockerfile itself, so the bench cannot drift from the image. Every
// server the bench starts gets them, the service and the baselines alike, so that a ratio compares
// servers, not allocators. BENCH_ALLOCATOR=glibc runs them all on glibc's malloc instead, to
// compare the two.

import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { aptInstall } from "./apt.js";
import { config } from "./config.js";

/** The Dockerfile's LD_PRELOAD and MALLOC_CONF, as its ENV instruction sets them. */
export function imageAllocatorEnv(
  dockerfile = readFileSync(new URL("../Dockerfile", import.meta.url), "utf8"),
): Record<string, string> {
  const env: Record<string, string> = {};
  for (const name of ["LD_PRELOAD", "MALLOC_CONF"]) {
    const value = new RegExp(`^\\s*(?:ENV\\s+)?${name}=(\\S+?)\\s*\\\\?$`, "m").exec(dockerfile)?.[1];
    if (value === undefined) throw new Error(`the Dockerfile sets no ${name}: bench/allocator.ts reads it from there`);
    env[name] = value;
  }
  return env;
}

/** Whether a node started with `env` has jemalloc mapped. */
export function jemallocLoaded(env: Readonly<Record<string, string>>): boolean {
  const probe = spawnSync(
    process.execPath,
    [
      "-e",
      "process.stdout.write(String(require('node:fs').readFileSync('/proc/self/maps', 'utf8').includes('libjemalloc')))",
    ],
    { env: { ...process.env, ...env }, encoding: "utf8" },
  );
  return probe.stdout === "true";
}

export interface Allocator {
  /** For the report's header. */
  readonly description: string;
  /** Environment for every server process. */
  readonly env: Readonly<Record<string, string>>;
}

/** The image's allocator, installed with apt-get when missing and running as root; glibc's where it cannot be. */
export function benchAllocator(progress: (line: string) => void): Allocator {
  if (config.allocator === "glibc") return { description: "glibc's malloc (BENCH_ALLOCATOR=glibc)", env: {} };
  const env = imageAllocatorEnv();
  const described = Object.entries(env)
    .map(([name, value]) => `${name}=${value}`)
    .join(" ");
  if (jemallocLoaded(env) || (aptInstall("libjemalloc2", progress) && jemallocLoaded(env))) {
    return { description: `jemalloc as the image runs it (${described})`, env };
  }
  return {
    description: `glibc's malloc: jemalloc did not load with the image's settings (${described}; is libjemalloc2 installed?), so the servers do not run as the image does`,
    env: {},
  };
}
