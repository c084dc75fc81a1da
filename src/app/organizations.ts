// Use cases of organizations: registering them (the provisioning job) and reading them.

import type { Cancellation } from "../runtime/cancellation.js";
import { AlreadyExistsError, type IdempotencyRecord, type OrganizationRecord, type Store } from "../store/store.js";
import { ServiceError } from "./errors.js";
import { newId } from "./ids.js";

export class Organizations {
  constructor(
    private readonly store: Store,
    private readonly now: () => Date = () => new Date(),
  ) {}

  /**
   * Registers an organization; `id` "" means generate one. Nothing is written once `signal` aborts.
   * `answerFor` makes the idempotency record saved with it (see Actor.answerFor).
   */
  async create(
    id: string,
    name: string,
    signal?: Cancellation,
    answerFor?: (organization: OrganizationRecord) => IdempotencyRecord,
  ): Promise<OrganizationRecord> {
    const organization = { id: id === "" ? newId("org") : id, name, createTime: this.now() };
    try {
      return await this.store.createOrganization(organization, signal, answerFor?.(organization));
    } catch (error) {
      if (error instanceof AlreadyExistsError && error.conflict === "organization") {
        throw new ServiceError("ORGANIZATION_ALREADY_EXISTS", `organization "${organization.id}" already exists`, {
          field: "id",
        });
      }
      throw error;
    }
  }

  async get(id: string): Promise<OrganizationRecord> {
    const organization = await this.store.getOrganization(id);
    if (organization === undefined) {
      throw new ServiceError("ORGANIZATION_NOT_FOUND", `organization "${id}" not found`);
    }
    return organization;
  }

  /** Whether the organization is registered: the x-organization-id header must name one. */
  isRegistered(id: string): Promise<boolean> {
    return this.store.organizationExists(id);
  }
}
