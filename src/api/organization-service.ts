// Thin handlers of connections.v1.OrganizationService, for the provisioning job.

import type { OrganizationService } from "../../gen/connections/v1/organization_service_pb.js";
import type { Organizations } from "../app/organizations.js";
import { organizationToProto } from "./convert.js";
import type { ServiceHandlers } from "./rpc/types.js";
import * as validate from "./validate.js";

export function organizationServiceHandlers(
  organizations: Organizations,
): ServiceHandlers<(typeof OrganizationService)["method"]> {
  return {
    async createOrganization(request, call) {
      const id = request.id === "" ? "" : validate.organizationId("id", request.id);
      const organization = await organizations.create(id, validate.requiredName(request.name), call.signal);
      return { organization: organizationToProto(organization) };
    },

    async getOrganization(request) {
      const organization = await organizations.get(validate.organizationId("id", request.id));
      return { organization: organizationToProto(organization) };
    },
  };
}
