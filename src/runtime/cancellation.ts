// What a write watches to stop early: the part of an AbortSignal that the store uses.
//
// A unary call's cancellation (api/rpc/call-scope.ts) is not an AbortSignal. On Node 20 every
// AbortSignal gets a hidden class of its own (Node sets the signal's prototype, then adds its
// fields), and young collections keep an object with such a class alive until a mark-compact: a
// write's signal and what it held were promoted on every call, about 450 bytes a create
// (docs/performance.md, "Hidden classes of their own"). An AbortSignal still satisfies this, so
// tests and other callers pass one.

export interface Cancellation {
  readonly aborted: boolean;
  /** Why it was cancelled (a ServiceError for a call); undefined until then. */
  readonly reason: unknown;
  /** Throws `reason` once cancelled. */
  throwIfAborted(): void;
  /** Calls `listener` once, when it is cancelled; not when it was already. */
  addEventListener(type: "abort", listener: () => void): void;
  removeEventListener(type: "abort", listener: () => void): void;
}
