// Thin handlers of connections.v1.OrganizationService, for the provisioning job.

import { create } from "@bufbuild/protobuf";
import {
  CreateOrganizationResponseSchema,
  OrganizationService,
} from "../../gen/connections/v1/organization_service_pb.js";
import type { Organizations } from "../app/organizations.js";
import type { OrganizationRecord } from "../store/store.js";
import { organizationToProto } from "./convert.js";
import type { IdempotentWrites } from "./idempotency.js";
import type { ServiceHandlers } from "./rpc/types.js";
import * as validate from "./validate.js";

export function organizationServiceHandlers(
  organizations: Organizations,
  writes: IdempotentWrites,
): ServiceHandlers<(typeof OrganizationService)["method"]> {
  return {
    createOrganization: (request, call) =>
      // Provisioning keys belong to the caller: it acts for no organization.
      writes.run(
        OrganizationService.method.createOrganization,
        `caller:${call.caller}`,
        request,
        (organization: OrganizationRecord) =>
          create(CreateOrganizationResponseSchema, { organization: organizationToProto(organization) }),
        (answerFor) =>
          organizations.create(
            request.id === "" ? "" : validate.organizationId("id", request.id),
            validate.requiredName(request.name),
            call.signal,
            answerFor,
          ),
      ),

    async getOrganization(request) {
      const organization = await organizations.get(validate.organizationId("id", request.id));
      return { organization: organizationToProto(organization) };
    },
  };
}
