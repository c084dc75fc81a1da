// Debian packages the bench needs, installed when missing and running as root.

import { execFileSync } from "node:child_process";

/** Installs `pkg` with apt-get when running as root; false when not root or the install failed. */
export function aptInstall(pkg: string, progress: (line: string) => void): boolean {
  if (process.getuid?.() !== 0) return false;
  progress(`${pkg} is missing: apt-get install -y ${pkg}`);
  try {
    execFileSync("sh", ["-c", `apt-get update -qq && apt-get install -y -qq ${pkg}`], { stdio: "inherit" });
    return true;
  } catch {
    return false;
  }
}
