// How the dashboard BFF gives consent: it shows the destination organization's user the pending
// Connection, and activates exactly what the user saw by sending its etag. If the source changed
// the Connection meanwhile (deactivated it, or widened its scopes), the etag no longer matches:
// the service answers ABORTED ETAG_MISMATCH and changes nothing, and the BFF shows the new state
// instead of consenting to something the user never saw. Connect JSON over HTTP/1.1, as a
// browser-facing backend usually speaks it.
//
// Every write carries a request_id made once per user action, and the client retries UNAVAILABLE
// with the service config's policy (../retry-policy.ts): if a replica restarts while the user
// clicks "activate", the retry answers what the first attempt did (the activation, not
// FAILED_PRECONDITION "already active"), and nothing is activated twice.

import { randomUUID } from "node:crypto";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { type Connection, Connection_State } from "../../gen/connections/v1/connection_pb.js";
import { ConnectionService } from "../../gen/connections/v1/connection_service_pb.js";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { retrying } from "../retry-policy.js";

export interface DashboardClientOptions {
  readonly baseUrl: string;
  readonly token: string;
  readonly deadlineMs?: number;
}

export type ActivationOutcome =
  | { readonly outcome: "activated"; readonly connection: Connection }
  | { readonly outcome: "changed-meanwhile"; readonly current: Connection | undefined };

/** The ErrorInfo reason of a service error (e.g. "ETAG_MISMATCH"), or "". */
export function reasonOf(error: ConnectError): string {
  return error.findDetails(ErrorInfoSchema)[0]?.reason ?? "";
}

export function createDashboardClient(options: DashboardClientOptions) {
  const client = createClient(
    ConnectionService,
    createConnectTransport({ baseUrl: options.baseUrl, httpVersion: "1.1", interceptors: [retrying()] }),
  );
  const callOptions = (organizationId: string, actor: string) => ({
    headers: { authorization: `Bearer ${options.token}`, "x-organization-id": organizationId, "x-actor": actor },
    timeoutMs: options.deadlineMs ?? 5_000,
  });

  return {
    /** What the user is shown: the Connection as the acting (destination) organization sees it. */
    async show(organizationId: string, actor: string, id: string): Promise<Connection> {
      const { connection } = await client.getConnection({ id }, callOptions(organizationId, actor));
      if (connection === undefined) throw new Error("GetConnection returned no connection");
      return connection;
    },

    /** Activates `seen` if, and only if, it is still what the user saw. */
    async activate(organizationId: string, actor: string, seen: Connection): Promise<ActivationOutcome> {
      try {
        const { connection } = await client.activateConnection(
          { id: seen.id, etag: seen.etag, requestId: randomUUID() },
          callOptions(organizationId, actor),
        );
        if (connection?.state !== Connection_State.ACTIVE) throw new Error("activation returned no ACTIVE connection");
        return { outcome: "activated", connection };
      } catch (error) {
        const failure = ConnectError.from(error);
        if (failure.code === Code.Aborted && reasonOf(failure) === "ETAG_MISMATCH") {
          const current = await this.show(organizationId, actor, seen.id);
          return { outcome: "changed-meanwhile", current };
        }
        throw failure;
      }
    },
  };
}
