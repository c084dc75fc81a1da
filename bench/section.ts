// What a benchmark section is, for adding one. The runner (run.ts) starts the servers once, runs the
// check measurements, then every section in its SECTIONS list while the servers are still up, and
// prints each section's figures after the check tables. A section is one file exporting a `Section`:
//
//   export const writes: Section = { name: "writes", async run(bench) { ...; return { print, verdicts, problems } } };
//
// and one line in run.ts's SECTIONS. Measure in `run`, print in `print` (with report.ts's `table`
// and formatters) so the tables come out together at the end; judge ratios with report.ts's
// `verdict` against a goal added to config.ts's GOALS; report every failed request or wrong answer
// in `problems`, which make the run exit 1.

import type { Credentials, Target } from "./servers.js";

/** What the runner hands every section: the servers under test and how to call them. */
export interface Bench {
  /** Removed at the end of the run: plans, request bodies, logs. */
  readonly workDir: string;
  readonly credentials: Credentials;
  readonly targets: readonly Target[];
}

export interface SectionOutcome {
  /** Prints the section's tables to stdout (called after the servers have stopped). */
  print(): void;
  /** One line per goal, from report.ts's `verdict`. */
  readonly verdicts: readonly string[];
  /** Every failed request or wrong answer, as lines; any line fails the run. */
  readonly problems: readonly string[];
}

export interface Section {
  /** Shown in the progress lines. */
  readonly name: string;
  run(bench: Bench): Promise<SectionOutcome>;
}
