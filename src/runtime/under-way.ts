// What is under way now (the calls running, the request bodies awaited), for hot paths that add
// and remove one entry per call and rarely go through them all.
//
// Not a Set or a Map: V8 replaces their table every few dozen additions under such churn (deleted
// entries take room until the next one), and keeps each replaced table pointing at its successor
// and at the entries it held. Once one of those tables is in the old generation and dead, young
// collections still take everything it points at for live (only a full collection knows it is
// dead): the chain of successor tables, and every call that was in one of them. So a long-lived
// Set with an entry per call kept every call's objects alive through young collections until they
// were promoted, and they filled the old generation with garbage that only a mark-compact's pause
// removed (docs/performance.md, "Sets with an entry per call"). A removed entry here drops every
// reference it held, and nothing else points at it.

/** One value's place in an UnderWay list, which alone changes it; `remove` takes it out. */
export interface UnderWayEntry<T extends object> {
  value: T | undefined;
  previous: UnderWayEntry<T> | undefined;
  next: UnderWayEntry<T> | undefined;
}

export class UnderWay<T extends object> {
  #first: UnderWayEntry<T> | undefined;
  #last: UnderWayEntry<T> | undefined;
  #size = 0;

  get size(): number {
    return this.#size;
  }

  /** Adds `value`; the entry returned removes it. */
  add(value: T): UnderWayEntry<T> {
    const entry: UnderWayEntry<T> = { value, previous: undefined, next: this.#first };
    if (this.#first !== undefined) this.#first.previous = entry;
    else this.#last = entry;
    this.#first = entry;
    this.#size++;
    return entry;
  }

  /** Takes the entry's value out; an entry already removed is left alone. */
  remove(entry: UnderWayEntry<T>): void {
    if (entry.value === undefined) return;
    if (entry.previous === undefined) this.#first = entry.next;
    else entry.previous.next = entry.next;
    if (entry.next === undefined) this.#last = entry.previous;
    else entry.next.previous = entry.previous;
    entry.value = undefined;
    entry.previous = undefined;
    entry.next = undefined;
    this.#size--;
  }

  /** The entry of the value added first of those still here: a queue's head. */
  get oldest(): UnderWayEntry<T> | undefined {
    return this.#last;
  }

  /** The values now, newest first: a copy, so that the caller may remove entries as it goes. */
  values(): T[] {
    const values: T[] = [];
    for (let entry = this.#first; entry !== undefined; entry = entry.next) values.push(entry.value as T);
    return values;
  }
}
