// Admission control's decisions on figures alone: the limit, the fair shares between callers, the
// adaptation to event-loop delay, and the tickets that hold a place. No server, no real clock.

import { describe, expect, it } from "vitest";
import {
  AdmissionController,
  type AdmissionRefusal,
  type AdmissionSettings,
  AdmissionTicket,
} from "../../src/api/rpc/admission.js";

const SETTINGS: AdmissionSettings = {
  maxInFlight: 12,
  minInFlight: 2,
  targetDelayMs: 50,
  callerIdleMs: 1_000,
  pushbackMs: 100,
};

/** Admits `count` calls of `caller` at `now`: how many got in, and the refusals of the rest. */
function flood(controller: AdmissionController, caller: string, count: number, now = 0) {
  let admitted = 0;
  const refusals: AdmissionRefusal[] = [];
  for (let index = 0; index < count; index++) {
    const refusal = controller.tryAdmit(caller, now);
    if (refusal === undefined) admitted++;
    else refusals.push(refusal);
  }
  return { admitted, refusals };
}

describe("admission control", () => {
  it("lets one caller alone take the whole limit (90% of the ceiling), and refuses the next call with 'limit'", () => {
    const controller = new AdmissionController(SETTINGS);
    expect(controller.limit).toBe(10);
    expect(flood(controller, "token-service", 20)).toEqual({ admitted: 10, refusals: Array(10).fill("limit") });
    controller.release("token-service");
    expect(controller.tryAdmit("token-service", 0)).toBeUndefined();
  });

  it("keeps the dashboard's and the gateway's shares while the token service floods", () => {
    // The adaptive limit at 12, under a ceiling of 20.
    const controller = new AdmissionController({ ...SETTINGS, maxInFlight: 20 });
    controller.adapt(75);
    expect(controller.limit).toBe(12);
    expect(flood(controller, "token-service", 13)).toEqual({ admitted: 12, refusals: ["limit"] });
    // Each newcomer gets its guaranteed part (12 / 3 = 4) at once, even with the limit taken.
    expect(controller.tryAdmit("dashboard-bff", 1)).toBeUndefined();
    expect(controller.tryAdmit("api-gateway", 1)).toBeUndefined();
    // The flood may not borrow while the others are owed their parts: as its calls end, the room
    // goes to nobody else's loss, and its own further calls are refused.
    for (let index = 0; index < 8; index++) controller.release("token-service");
    expect(flood(controller, "token-service", 10, 2)).toEqual({ admitted: 0, refusals: Array(10).fill("share") });
    expect(flood(controller, "dashboard-bff", 3, 2).admitted).toBe(3);
    expect(flood(controller, "api-gateway", 3, 2).admitted).toBe(3);
    expect(controller.snapshot().inFlightByCaller).toEqual(
      new Map([
        ["token-service", 4],
        ["dashboard-bff", 4],
        ["api-gateway", 4],
      ]),
    );
  });

  it("keeps the token service's share while the gateway floods", () => {
    const controller = new AdmissionController(SETTINGS);
    expect(controller.tryAdmit("token-service", 0)).toBeUndefined();
    controller.release("token-service");
    // The token service is idle but active: half of the limit stays owed to it.
    expect(flood(controller, "api-gateway", 20, 1)).toEqual({ admitted: 5, refusals: Array(15).fill("share") });
    expect(flood(controller, "token-service", 5, 2).admitted).toBe(5);
  });

  it("gives an idle caller's part back to the others once it has been idle long enough", () => {
    const controller = new AdmissionController(SETTINGS);
    expect(controller.tryAdmit("dashboard-bff", 0)).toBeUndefined();
    controller.release("dashboard-bff");
    expect(flood(controller, "token-service", 12, 500).admitted).toBe(5);
    expect(flood(controller, "token-service", 12, 1_000).admitted).toBe(5);
  });

  it("tells each active caller's part of the limit (what the transport spreads over its connections), and it follows the limit", () => {
    const controller = new AdmissionController(SETTINGS);
    // Nobody active: the whole limit (90% of the ceiling, floored).
    expect(controller.share(0)).toBe(10);
    expect(controller.tryAdmit("token-service", 0)).toBeUndefined();
    expect(controller.tryAdmit("dashboard-bff", 0)).toBeUndefined();
    expect(controller.share(0)).toBe(5);
    controller.release("dashboard-bff");
    // The dashboard idle for ADMISSION_CALLER_IDLE_MS: its part goes back; the token service holds a call.
    expect(controller.share(1_000)).toBe(10);
    controller.adapt(Number.POSITIVE_INFINITY);
    expect(controller.share(1_000)).toBe(controller.limit);
  });

  it("shrinks the limit by at least a fifth per window of delay above the target, more the longer the delay", () => {
    const controller = new AdmissionController(SETTINGS);
    controller.adapt(50);
    expect(controller.limit).toBe(10); // on target: nothing moves
    controller.adapt(60);
    expect(controller.limit).toBe(8); // 10 * 0.8
    controller.adapt(500);
    expect(controller.limit).toBe(SETTINGS.minInFlight); // 8 * 50 / 500, and no lower than the floor
  });

  it("grows the limit only while demand presses on it and the delay is on target, up to 90% of the ceiling", () => {
    const controller = new AdmissionController(SETTINGS);
    for (let window = 0; window < 10; window++) controller.adapt(80);
    expect(controller.limit).toBe(2);
    controller.adapt(10);
    expect(controller.limit).toBe(2); // nobody asked for more
    expect(flood(controller, "token-service", 3).refusals).toEqual(["limit"]);
    controller.adapt(10);
    expect(controller.limit).toBe(3); // 2 + sqrt(2)
    for (let window = 0; window < 20; window++) {
      flood(controller, "token-service", 20);
      controller.adapt(10);
    }
    expect(controller.limit).toBe(10);
  });

  it("counts a ticket once: released by the pipeline, or abandoned by the transport before the pipeline ran it", () => {
    const controller = new AdmissionController({ ...SETTINGS, maxInFlight: 3, minInFlight: 1 });
    const admit = () => {
      expect(controller.tryAdmit("token-service", 0)).toBeUndefined();
      return new AdmissionTicket(controller, "token-service");
    };
    const run = admit();
    const refusedBody = admit();
    run.claim();
    run.abandon(); // the stream closed while the pipeline still works: the place stays taken
    expect(controller.snapshot().inFlight).toBe(2);
    run.release();
    run.release();
    refusedBody.abandon();
    refusedBody.abandon();
    expect(controller.snapshot().inFlight).toBe(0);
  });

  it("refuses settings whose floor is above the ceiling", () => {
    expect(() => new AdmissionController({ ...SETTINGS, minInFlight: 13 })).toThrow(RangeError);
  });
});
