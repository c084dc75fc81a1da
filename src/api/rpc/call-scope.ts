// One call's cancellation scope: the deadline, the client going away and shutdown each abort it,
// with the ServiceError that says which. The pipeline races a call's work against it; handlers pass
// it to the store (it is the call's Cancellation) so that an uncommitted write rolls back.

import { ServiceError } from "../../app/errors.js";
import type { Cancellation } from "../../runtime/cancellation.js";
import type { CallerName } from "../callers.js";
import type { RequestMeta } from "./types.js";

/** How close to its deadline a client's cancellation counts as the deadline passing. */
const DEADLINE_SLACK_MS = 100;

function deadlineExceeded(): ServiceError {
  return new ServiceError("DEADLINE_EXCEEDED", "the deadline passed before the RPC finished");
}

/**
 * One call's cancellation: aborted by the client going away, by the deadline, or by shutdown
 * (RpcPipeline.cancelInFlight). Also what the log line reports of a call that ended early. It is
 * the Cancellation that handlers pass to the store, with no AbortSignal behind it
 * (runtime/cancellation.ts says why).
 */
export class CallScope implements Cancellation {
  caller: CallerName | undefined;
  organizationId = "";
  #reason: ServiceError | undefined;
  /** The store's listeners (a pool connection to cancel on PostgreSQL); rarely more than one. */
  #listeners: (() => void)[] | undefined;
  #interrupt: ((reason: ServiceError) => void) | undefined;
  #ended = false;
  private readonly timer: NodeJS.Timeout | undefined;

  constructor(
    meta: RequestMeta,
    private readonly deadline: number,
  ) {
    const remaining = deadline - Date.now();
    // A deadline that has already passed (grpc-timeout "1n") is not served, however fast the handler.
    if (remaining <= 0) this.expire();
    else if (remaining !== Number.POSITIVE_INFINITY) this.timer = setTimeout(this.expire, remaining);
    meta.onClientGone(this.clientGone);
  }

  get aborted(): boolean {
    return this.#reason !== undefined;
  }

  get reason(): ServiceError | undefined {
    return this.#reason;
  }

  throwIfAborted(): void {
    if (this.#reason !== undefined) throw this.#reason;
  }

  addEventListener(_type: "abort", listener: () => void): void {
    if (this.#reason !== undefined) return;
    if (this.#listeners === undefined) this.#listeners = [listener];
    else this.#listeners.push(listener);
  }

  removeEventListener(_type: "abort", listener: () => void): void {
    const index = this.#listeners?.indexOf(listener) ?? -1;
    if (index >= 0) this.#listeners?.splice(index, 1);
  }

  abort(reason: ServiceError): void {
    if (this.#reason !== undefined || this.#ended) return;
    this.#reason = reason;
    const listeners = this.#listeners;
    this.#listeners = undefined;
    if (listeners !== undefined) for (const listener of listeners) listener();
    this.#interrupt?.(reason);
  }

  /**
   * `work`'s outcome, or a rejection with the abort reason as soon as the call is aborted. Work cut
   * off this way runs on in the background (its store calls see the signal and roll back); its
   * result is dropped.
   */
  race<T>(work: Promise<T>): Promise<T> {
    if (this.#reason !== undefined) {
      work.catch(() => {});
      return Promise.reject(this.#reason);
    }
    return new Promise<T>((resolve, reject) => {
      this.#interrupt = reject;
      work.then(resolve, reject);
    });
  }

  end(): void {
    this.#ended = true;
    this.#interrupt = undefined;
    clearTimeout(this.timer);
  }

  private readonly expire = (): void => {
    this.abort(deadlineExceeded());
  };

  private readonly clientGone = (): void => {
    // A client whose deadline passed resets the stream on its own clock, which runs ahead of ours
    // by the time its request took to arrive: a reset that close to the deadline is the deadline.
    if (Date.now() >= this.deadline - DEADLINE_SLACK_MS) this.expire();
    else this.abort(new ServiceError("CANCELLED", "the client cancelled the call"));
  };
}

export function shuttingDownError(): ServiceError {
  return new ServiceError(
    "SHUTTING_DOWN",
    "the server is shutting down and cut this call short; what it did not commit was rolled back. Retry",
  );
}
