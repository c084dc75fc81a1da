// The caller table of docs/API.md: which caller may call which RPC, and which RPCs act for an
// organization (and so need a registered x-organization-id). Fail closed: an RPC missing here
// cannot be registered.

import type { CallerName } from "./callers.js";

export interface MethodPolicy {
  readonly callers: readonly CallerName[];
  readonly actsForOrganization: boolean;
  /** Callers that serve every organization here: they send no x-organization-id. */
  readonly actsForEveryOrganization?: readonly CallerName[];
}

const BFF_AND_GATEWAY: readonly CallerName[] = ["dashboard-bff", "api-gateway"];

export const CALLER_TABLE: Readonly<Record<string, MethodPolicy>> = {
  "connections.v1.ConnectionService/CreateConnection": { callers: BFF_AND_GATEWAY, actsForOrganization: true },
  "connections.v1.ConnectionService/GetConnection": {
    callers: ["dashboard-bff", "api-gateway", "token-service"],
    actsForOrganization: true,
  },
  "connections.v1.ConnectionService/ListConnections": { callers: BFF_AND_GATEWAY, actsForOrganization: true },
  // Consent is given in the dashboard only: this is the internal-caller gate.
  "connections.v1.ConnectionService/ActivateConnection": { callers: ["dashboard-bff"], actsForOrganization: true },
  "connections.v1.ConnectionService/DeactivateConnection": { callers: BFF_AND_GATEWAY, actsForOrganization: true },
  "connections.v1.ConnectionService/ReactivateConnection": { callers: BFF_AND_GATEWAY, actsForOrganization: true },
  "connections.v1.ConnectionService/ListConnectionEvents": { callers: BFF_AND_GATEWAY, actsForOrganization: true },
  // The token service follows every Connection's changes; the others see their organization's.
  "connections.v1.ConnectionService/WatchConnectionEvents": {
    callers: ["dashboard-bff", "api-gateway", "token-service"],
    actsForOrganization: true,
    actsForEveryOrganization: ["token-service"],
  },
  "connections.v1.ConnectionService/CheckConnection": { callers: ["token-service"], actsForOrganization: false },
  "connections.v1.ConnectionService/UpdateConnection": { callers: BFF_AND_GATEWAY, actsForOrganization: true },
  "connections.v1.ConnectionService/BatchCheckConnection": {
    callers: ["token-service"],
    actsForOrganization: false,
  },
  "connections.v1.OrganizationService/CreateOrganization": { callers: ["provisioning"], actsForOrganization: false },
  "connections.v1.OrganizationService/GetOrganization": {
    callers: ["provisioning", "dashboard-bff"],
    actsForOrganization: false,
  },
};
