// Idempotent writes (docs/API.md, "Idempotency"): a write retried with its request_id answers what
// the first call answered — the response message as it was sent then, or its final error — and
// changes nothing. The key is checked before any other rule of the request, so a key reused with
// other parameters is REQUEST_ID_REUSED even when those parameters would be refused anyway.

import { createHash } from "node:crypto";
import {
  clone,
  type DescMessage,
  type DescMethodUnary,
  fromBinary,
  type Message,
  type MessageShape,
  ScalarType,
  toBinary,
} from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { type ErrorReason, invalidArgument, ServiceError } from "../app/errors.js";
import type { Idempotency, IdempotencyKey } from "../app/idempotency.js";
import { AlreadyExistsError, type IdempotencyRecord } from "../store/store.js";
import { encodeForSending } from "./binary-codecs.js";
import { toRpcStatus } from "./status.js";

const MAX_REQUEST_ID_LENGTH = 128;
const PRINTABLE_ASCII = /^[\x20-\x7e]+$/;

/** A final error says the same on every retry: it is remembered. The rest say "try again" and are not. */
const FINAL_CODES: ReadonlySet<Code> = new Set([
  Code.FailedPrecondition,
  Code.NotFound,
  Code.PermissionDenied,
  Code.AlreadyExists,
  Code.InvalidArgument,
]);

/** Saves a write's answer in the write's own transaction: given the result the write returns. */
export type AnswerFor<R> = (result: R) => IdempotencyRecord;

/** The request_id of a write request: 1 to 128 printable ASCII characters, or "" for none. */
export function requestIdOf(value: string): string {
  if (value === "") return "";
  if (value.length > MAX_REQUEST_ID_LENGTH || !PRINTABLE_ASCII.test(value)) {
    throw invalidArgument("request_id", `request_id must be 1 to ${MAX_REQUEST_ID_LENGTH} printable ASCII characters`);
  }
  return value;
}

export class IdempotentWrites {
  constructor(
    private readonly idempotency: Idempotency,
    /** Told the method of every replayed answer (metrics). */
    private readonly onReplay: (method: string) => void = () => {},
  ) {}

  /**
   * Runs `write` so that a retry with the request's request_id (in `scope`) answers what the first
   * call answered. `write` gets the function that makes its answer's record (undefined without a
   * request_id) and must save that record in its own transaction; `respond` turns its result into
   * the response message, which is what the record keeps.
   *
   * The write runs without reading first: a retry's write meets the first answer's primary key and
   * rolls back whole (or fails before it, as a repeated transition or create does), and only then is
   * the first answer read and replayed. So a write pays nothing for its key but the record itself.
   */
  async run<I extends DescMessage, O extends DescMessage, R>(
    method: DescMethodUnary<I, O>,
    scope: string,
    request: MessageShape<I> & { readonly requestId: string },
    respond: (result: R) => MessageShape<O>,
    write: (answerFor: AnswerFor<R> | undefined) => Promise<R>,
  ): Promise<MessageShape<O>> {
    const requestId = requestIdOf(request.requestId);
    if (requestId === "") return respond(await write(undefined));
    const key: IdempotencyKey = { scope, requestId, method: method.name, fingerprint: fingerprintOf(method, request) };
    return this.idempotency.exclusive(key, async () => {
      try {
        // The response saved with the write is the one returned: made once, encoded once, and the
        // bytes saved are the bytes sent.
        let answered: { readonly result: R; readonly response: MessageShape<O> } | undefined;
        const result = await write((made) => {
          answered = { result: made, response: respond(made) };
          return this.idempotency.record(key, { response: encodeForSending(method.output, answered.response) });
        });
        return answered?.result === result ? answered.response : respond(result);
      } catch (error) {
        return await this.#answerFailure(method, key, error);
      }
    });
  }

  /**
   * A write that failed with a key answered before (its own retry, or a misuse) replays that answer
   * or is REQUEST_ID_REUSED, whatever it failed with; otherwise a final error is remembered.
   */
  async #answerFailure<O extends DescMessage>(
    method: DescMethodUnary<DescMessage, O>,
    key: IdempotencyKey,
    error: unknown,
  ): Promise<MessageShape<O>> {
    const earlier = await this.idempotency.find(key).catch(() => undefined);
    if (earlier !== undefined) return this.#replay(method, key, earlier);
    if (isKeyTaken(error)) throw requestInProgress(key);
    if (!(error instanceof ServiceError) || !FINAL_CODES.has(toRpcStatus(error).status.code)) throw error;
    try {
      const { reason, message, metadata } = error;
      await this.idempotency.save(this.idempotency.record(key, { error: { reason, message, metadata } }));
    } catch (saveError) {
      if (isKeyTaken(saveError)) return this.#replayWinner(method, key);
      // Not remembered: a retry decides again, and a final error decides the same.
    }
    throw error;
  }

  /** Another call (another replica, or a race in this one) saved the answer first: it is the answer. */
  async #replayWinner<O extends DescMessage>(
    method: DescMethodUnary<DescMessage, O>,
    key: IdempotencyKey,
  ): Promise<MessageShape<O>> {
    const winner = await this.idempotency.find(key);
    if (winner === undefined) throw requestInProgress(key);
    return this.#replay(method, key, winner);
  }

  #replay<O extends DescMessage>(
    method: DescMethodUnary<DescMessage, O>,
    key: IdempotencyKey,
    earlier: IdempotencyRecord,
  ): MessageShape<O> {
    if (earlier.method !== key.method || earlier.fingerprint !== key.fingerprint) {
      const what = earlier.method === key.method ? "other parameters" : earlier.method;
      throw new ServiceError("REQUEST_ID_REUSED", `request_id "${key.requestId}" was already used with ${what}`, {
        field: "request_id",
      });
    }
    this.onReplay(key.method);
    const { outcome } = earlier;
    if ("response" in outcome) return fromBinary(method.output, outcome.response);
    throw new ServiceError(outcome.error.reason as ErrorReason, outcome.error.message, outcome.error.metadata);
  }
}

/** The key's answer exists but cannot be read yet (its transaction is still committing elsewhere). */
function requestInProgress(key: IdempotencyKey): ServiceError {
  return new ServiceError("REQUEST_IN_PROGRESS", `a call with request_id "${key.requestId}" is in progress; retry`);
}

function isKeyTaken(error: unknown): boolean {
  return error instanceof AlreadyExistsError && error.conflict === "request_id";
}

/**
 * A digest of the request without its request_id. Lists of strings (scopes, update_mask paths)
 * are compared as sets, as the service reads them: a retry that lists them in another order is
 * the same request.
 */
function fingerprintOf(method: DescMethodUnary, request: Message): string {
  const canonical = clone(method.input, request) as Message & Record<string, unknown>;
  canonicalize(method.input, canonical);
  canonical.requestId = "";
  return createHash("sha256").update(toBinary(method.input, canonical)).digest("base64url");
}

function canonicalize(schema: DescMessage, message: Record<string, unknown>): void {
  for (const field of schema.fields) {
    const value = message[field.localName];
    if (field.fieldKind === "list" && field.listKind === "scalar" && field.scalar === ScalarType.STRING) {
      message[field.localName] = [...new Set(value as string[])].sort();
    } else if (field.fieldKind === "message" && value !== undefined) {
      canonicalize(field.message, value as Record<string, unknown>);
    }
  }
}
