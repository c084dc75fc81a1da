// Admission control's decisions on figures alone: the limit, the fair shares between callers, the
// adaptation to event-loop delay, the tickets that hold a place, and the calls that wait for one.
// No server, no real clock.

import { describe, expect, it } from "vitest";
import type { CallerName } from "../../src/api/callers.js";
import {
  AdmissionController,
  type AdmissionRefusal,
  type AdmissionSettings,
  AdmissionTicket,
  BUSY,
} from "../../src/api/rpc/admission.js";
import { Metrics } from "../../src/observability/metrics.js";

const SETTINGS: AdmissionSettings = {
  maxInFlight: 12,
  minInFlight: 2,
  targetDelayMs: 50,
  callerIdleMs: 1_000,
  pushbackMs: 100,
  maxQueued: 3,
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

  it("leaves the limit alone when the loop's delay came with an idle loop (other processes' load), and shrinks it when the loop was busy", () => {
    const controller = new AdmissionController(SETTINGS);
    controller.adapt(500, 0.3);
    expect(controller.limit).toBe(10);
    controller.adapt(500, BUSY - 0.01);
    expect(controller.limit).toBe(10);
    controller.adapt(60, BUSY);
    expect(controller.limit).toBe(8);
  });

  it("calls a caller quick while its calls are at work under a millisecond on average and none of them waits for room", () => {
    const controller = new AdmissionController(SETTINGS);
    // One call at a time, each at work for `ms`.
    const work = (caller: string, count: number, ms: number) => {
      for (let index = 0; index < count; index++) {
        expect(controller.tryAdmit(caller, 0)).toBeUndefined();
        controller.release(caller, ms);
      }
    };
    expect(controller.quick("token-service")).toBe(false);
    work("token-service", 3, 0.05);
    expect(controller.quick("token-service")).toBe(true);
    // Two calls that wait 20 ms on the store move the average past a millisecond...
    work("token-service", 2, 20);
    expect(controller.quick("token-service")).toBe(false);
    // ...and it takes a run of quick calls to bring it back, not one.
    work("token-service", 1, 0.05);
    expect(controller.quick("token-service")).toBe(false);
    work("token-service", 20, 0.05);
    expect(controller.quick("token-service")).toBe(true);
    // A caller with a call waiting for room is not quick, however fast its calls were.
    const gateway = new AdmissionController(SETTINGS);
    expect(flood(gateway, "api-gateway", 1).admitted).toBe(1);
    gateway.release("api-gateway", 0.05);
    const { held, waiting } = enterMany(gateway, "api-gateway", 11);
    expect([held.length, waiting.length]).toEqual([10, 1]);
    expect(gateway.quick("api-gateway")).toBe(false);
    held[0]?.release();
    expect(waiting[0]?.waiting).toBe(false);
    expect(gateway.quick("api-gateway")).toBe(true);
  });

  it("refuses settings whose floor is above the ceiling", () => {
    expect(() => new AdmissionController({ ...SETTINGS, minInFlight: 13 })).toThrow(RangeError);
  });
});

/** Enters `count` calls of `caller` at `now`: the tickets, and the refusals. */
function enterMany(controller: AdmissionController, caller: CallerName, count: number, now = 0) {
  const tickets: AdmissionTicket[] = [];
  const refusals: AdmissionRefusal[] = [];
  for (let index = 0; index < count; index++) {
    const entered = controller.enter(caller, now);
    if (entered instanceof AdmissionTicket) tickets.push(entered);
    else refusals.push(entered);
  }
  return {
    held: tickets.filter((ticket) => !ticket.waiting),
    waiting: tickets.filter((ticket) => ticket.waiting),
    refusals,
  };
}

describe("admission control: calls that wait for room", () => {
  it("makes a lone caller's burst beyond the limit wait, first in first admitted as its calls end, and refuses only past its queue", () => {
    const controller = new AdmissionController(SETTINGS);
    const { held, waiting, refusals } = enterMany(controller, "api-gateway", 14);
    expect([held.length, waiting.length]).toEqual([10, 3]);
    expect(refusals).toEqual(["limit"]);
    const admitted: number[] = [];
    for (const [index, ticket] of waiting.entries()) ticket.whenAdmitted(() => admitted.push(index));
    expect(admitted).toEqual([]);
    // A later call of the same caller waits behind the earlier ones, even when room was just made.
    held[0]?.release();
    expect(admitted).toEqual([0]);
    held[1]?.release();
    held[2]?.release();
    expect(admitted).toEqual([0, 1, 2]);
    expect(waiting.every((ticket) => !ticket.waiting)).toBe(true);
    const snapshot = controller.snapshot();
    expect(snapshot.inFlight).toBe(10);
    expect(snapshot.waitingByCaller).toEqual(new Map());
    expect(snapshot.waitsByCaller.get("api-gateway")).toMatchObject({ admitted: 3, expired: 0, cancelled: 0 });
  });

  it("keeps a newcomer's call ahead of a storm's queue, and gives the room the storm's calls leave to its own queue only within its share", () => {
    const controller = new AdmissionController(SETTINGS);
    const storm = enterMany(controller, "token-service", 20);
    expect([storm.held.length, storm.waiting.length, storm.refusals.length]).toEqual([10, 3, 7]);
    // The dashboard is owed half of the limit: admitted at once, whatever waits in the storm's queue.
    expect(enterMany(controller, "dashboard-bff", 2, 1).held).toHaveLength(2);
    const admitted: AdmissionTicket[] = [];
    for (const ticket of storm.waiting) ticket.whenAdmitted(() => admitted.push(ticket));
    // The storm's own calls end: its waiting calls get in only once it is back within what it may have
    // (5, its share, while the dashboard is owed 3 more).
    for (const ticket of storm.held.slice(0, 5)) ticket.release();
    expect(admitted).toEqual([]);
    storm.held[5]?.release();
    expect(admitted).toEqual([storm.waiting[0]]);
    expect(controller.snapshot().inFlightByCaller).toEqual(
      new Map([
        ["token-service", 5],
        ["dashboard-bff", 2],
      ]),
    );
  });

  it("lets callers with waiting calls take turns at room that either may have", () => {
    const controller = new AdmissionController(SETTINGS);
    controller.adapt(60);
    expect(controller.limit).toBe(8);
    // Both active, a part of 4 each: two calls of each wait.
    enterMany(controller, "api-gateway", 1);
    enterMany(controller, "token-service", 1);
    const waiting = [
      ...enterMany(controller, "api-gateway", 5).waiting,
      ...enterMany(controller, "token-service", 5).waiting,
    ];
    expect(waiting).toHaveLength(4);
    const order: string[] = [];
    for (const ticket of waiting) ticket.whenAdmitted(() => order.push(ticket.caller ?? ""));
    // The limit grows back to 10: a part of 5 each, one more call for each caller.
    controller.adapt(10);
    controller.admitWaiting(0);
    expect(order).toEqual(["api-gateway", "token-service"]);
  });

  it("takes a call out of its queue when the client goes away or its deadline comes, counting each, and the next in line moves up", () => {
    const controller = new AdmissionController(SETTINGS);
    const { held, waiting } = enterMany(controller, "api-gateway", 13);
    const [cancelled, expired, last] = waiting;
    cancelled?.abandon();
    expired?.expire();
    expect(controller.snapshot().waitingByCaller).toEqual(new Map([["api-gateway", 1]]));
    let lastAdmitted = false;
    last?.whenAdmitted(() => {
      lastAdmitted = true;
    });
    held[0]?.release();
    expect(lastAdmitted).toBe(true);
    expect(controller.snapshot().waitsByCaller.get("api-gateway")).toMatchObject({
      admitted: 1,
      expired: 1,
      cancelled: 1,
    });
    // Left or admitted, a ticket counts once.
    last?.release();
    last?.release();
    expect(controller.snapshot().inFlight).toBe(9);
  });

  it("admits waiting calls when the limit grows or another caller goes idle", () => {
    const controller = new AdmissionController(SETTINGS);
    enterMany(controller, "dashboard-bff", 1).held[0]?.release();
    // The dashboard idle but active: the gateway may have half of the limit; the rest of its burst waits.
    const { held, waiting } = enterMany(controller, "api-gateway", 8, 10);
    expect([held.length, waiting.length]).toEqual([5, 3]);
    controller.admitWaiting(500);
    expect(waiting.filter((ticket) => !ticket.waiting)).toHaveLength(0);
    // ADMISSION_CALLER_IDLE_MS later the dashboard's part goes back to the gateway.
    controller.admitWaiting(1_000);
    expect(waiting.filter((ticket) => !ticket.waiting)).toHaveLength(3);
  });

  it("refuses at once, as before, when no call may wait (maxQueued 0)", () => {
    const controller = new AdmissionController({ ...SETTINGS, maxQueued: 0 });
    expect(enterMany(controller, "api-gateway", 12).refusals).toEqual(["limit", "limit"]);
  });
});

describe("admission control's metrics", () => {
  it("count the calls waiting, how each wait ended and how long the admitted ones waited, and the refusals", async () => {
    const controller = new AdmissionController({ ...SETTINGS, maxQueued: 2 });
    const metrics = new Metrics(undefined);
    metrics.watchAdmission(controller);
    const { held, waiting, refusals } = enterMany(controller, "api-gateway", 13, 0);
    for (const refusal of refusals) metrics.admissionRefused("api-gateway", refusal);
    waiting[0]?.expire();
    controller.admitWaiting(250);
    expect(await metrics.registry.metrics()).toContain('connections_admission_waiting{caller="api-gateway"} 1');
    held[0]?.release();
    const scraped = await metrics.registry.metrics();
    expect(scraped).not.toContain('connections_admission_waiting{caller="api-gateway"}');
    expect(scraped).toContain('connections_admission_waits_total{caller="api-gateway",outcome="admitted"} 1');
    expect(scraped).toContain('connections_admission_waits_total{caller="api-gateway",outcome="expired"} 1');
    expect(scraped).toContain('connections_admission_waits_total{caller="api-gateway",outcome="cancelled"} 0');
    expect(scraped).toContain('connections_admission_wait_seconds_total{caller="api-gateway"} 0.25');
    expect(scraped).toContain('connections_admission_refused_total{caller="api-gateway",reason="limit"} 1');
  });
});
