// The handler of WatchConnectionEvents: the request's start and the caller's visibility in, the
// change feed's batches out as wire messages. The feed itself (order, bounds, ends) is src/app/feed.ts.

import type { ConnectionService } from "../../gen/connections/v1/connection_service_pb.js";
import type { Feed, Viewer } from "../app/feed.js";
import { eventToProto } from "./convert.js";
import type { Call, ServiceHandlers } from "./rpc/types.js";

type WatchHandler = ServiceHandlers<(typeof ConnectionService)["method"]>["watchConnectionEvents"];

/**
 * A caller that acts for an organization sees the events of that organization's Connections; one
 * that the caller table lets act for every organization (the token service) sees them all.
 */
function viewerOf(call: Call): Viewer {
  return { organizationId: call.organizationId === "" ? undefined : call.organizationId };
}

export function watchConnectionEventsHandler(feed: Feed): WatchHandler {
  return async function* watchConnectionEvents(request, call, control) {
    const batches = feed.watch(
      viewerOf(call),
      { startAfter: request.startAfter, startAtNow: request.startAtNow },
      control,
    );
    for await (const batch of batches) {
      yield { events: batch.events.map(eventToProto), cursor: batch.cursor };
    }
  };
}
