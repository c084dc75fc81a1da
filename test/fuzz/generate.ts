// Seeded, reproducible fuzz cases for the port: a random request for a random RPC in a random
// protocol, content type and HTTP version, with mutated protobuf or JSON, framing and headers.
// The same seed and case index always give the same request, so a failure can be replayed.

import {
  create,
  type DescField,
  type DescMessage,
  type DescMethod,
  type MessageInitShape,
  ScalarType,
  toBinary,
  toJsonString,
} from "@bufbuild/protobuf";
import { envelope } from "../support/wire.js";

/** mulberry32: small, fast and good enough to pick fuzz cases. */
export class Random {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  }

  int(max: number): number {
    return Math.floor(this.next() * max);
  }

  chance(probability: number): boolean {
    return this.next() < probability;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)] as T;
  }
}

export interface Variant {
  readonly contentType: string;
  readonly http: "h2" | "http1";
  readonly enveloped: boolean;
  readonly json: boolean;
}

/** Every protocol and content type the port speaks, on each HTTP version that carries it. */
export const VARIANTS: readonly Variant[] = [
  { contentType: "application/grpc", http: "h2", enveloped: true, json: false },
  { contentType: "application/grpc+proto", http: "h2", enveloped: true, json: false },
  { contentType: "application/grpc+json", http: "h2", enveloped: true, json: true },
  { contentType: "application/grpc-web+proto", http: "h2", enveloped: true, json: false },
  { contentType: "application/grpc-web+json", http: "h2", enveloped: true, json: true },
  { contentType: "application/grpc-web+proto", http: "http1", enveloped: true, json: false },
  { contentType: "application/grpc-web+json", http: "http1", enveloped: true, json: true },
  { contentType: "application/proto", http: "h2", enveloped: false, json: false },
  { contentType: "application/json", http: "h2", enveloped: false, json: true },
  { contentType: "application/proto", http: "http1", enveloped: false, json: false },
  { contentType: "application/json", http: "http1", enveloped: false, json: true },
];

export interface FuzzCase {
  readonly index: number;
  readonly variant: Variant;
  readonly path: string;
  readonly headers: Record<string, string>;
  readonly body: Buffer;
  /** What was done to the request, for the failure report. */
  readonly mutations: readonly string[];
}

const INTERESTING_STRINGS = [
  "",
  "org_fuzz_a",
  "org_fuzz_b",
  "cxn_0000000000000000000000",
  "inquiry.read",
  "account.read",
  "x".repeat(300),
  "é".repeat(100),
  "\u0000",
  "\ud800",
  "a b",
  "%00%ff",
  "../../etc/passwd",
  "'; drop table connections; --",
  "🙂",
];
const INTERESTING_INTEGERS = [0, 1, -1, 50, 500, 501, 2 ** 31 - 1, -(2 ** 31), 7, 100, 101];

function randomScalar(random: Random, type: ScalarType): unknown {
  switch (type) {
    case ScalarType.STRING:
      return random.pick(INTERESTING_STRINGS);
    case ScalarType.BOOL:
      return random.chance(0.5);
    case ScalarType.BYTES:
      return Uint8Array.from({ length: random.int(8) }, () => random.int(256));
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return BigInt(random.pick(INTERESTING_INTEGERS));
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return BigInt(Math.abs(random.pick(INTERESTING_INTEGERS)));
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return Math.abs(random.pick(INTERESTING_INTEGERS));
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      return random.pick([0, 1.5, -1, Number.NaN, Number.POSITIVE_INFINITY]);
    default:
      return random.pick(INTERESTING_INTEGERS);
  }
}

function randomValue(random: Random, field: DescField, depth: number): unknown {
  switch (field.fieldKind) {
    case "scalar":
      return randomScalar(random, field.scalar);
    case "enum":
      return random.chance(0.8) ? random.pick(field.enum.values).number : random.int(1000);
    case "message":
      return depth > 2 ? undefined : randomInit(random, field.message, depth + 1);
    case "list": {
      const items = Array.from({ length: random.int(4) }, () =>
        field.listKind === "scalar"
          ? randomScalar(random, field.scalar)
          : field.listKind === "enum"
            ? random.pick(field.enum.values).number
            : depth > 2
              ? undefined
              : randomInit(random, field.message, depth + 1),
      );
      return items.filter((item) => item !== undefined);
    }
    case "map":
      return {};
  }
}

/** A random init of `schema`: each field (but oneofs) set with a chance, to a random value of its type. */
export function randomInit(random: Random, schema: DescMessage, depth = 0): Record<string, unknown> {
  const init: Record<string, unknown> = {};
  for (const field of schema.fields) {
    if (field.oneof !== undefined || random.chance(0.35)) continue;
    const value = randomValue(random, field, depth);
    if (value !== undefined) init[field.localName] = value;
  }
  return init;
}

/** A well-typed random request message, as protobuf binary and as JSON text. */
function randomMessage(random: Random, method: DescMethod): { binary: Uint8Array; json: string } {
  const message = create(method.input, randomInit(random, method.input) as MessageInitShape<DescMessage>);
  let json: string;
  try {
    json = toJsonString(method.input, message);
  } catch {
    json = "{}";
  }
  return { binary: toBinary(method.input, message), json };
}

function mutateBytes(random: Random, bytes: Uint8Array, mutations: string[]): Buffer {
  let out = Buffer.from(bytes);
  const rounds = 1 + random.int(3);
  for (let round = 0; round < rounds; round++) {
    switch (random.int(6)) {
      case 0: {
        if (out.length === 0) break;
        const at = random.int(out.length);
        out[at] = (out[at] as number) ^ (1 << random.int(8));
        mutations.push(`flip bit at ${at}`);
        break;
      }
      case 1: {
        const at = random.int(out.length + 1);
        const inserted = Buffer.from(Array.from({ length: 1 + random.int(4) }, () => random.int(256)));
        out = Buffer.concat([out.subarray(0, at), inserted, out.subarray(at)]);
        mutations.push(`insert ${inserted.toString("hex")} at ${at}`);
        break;
      }
      case 2: {
        const at = random.int(out.length + 1);
        out = out.subarray(0, at);
        mutations.push(`truncate to ${at}`);
        break;
      }
      case 3: {
        out = Buffer.from(Array.from({ length: random.int(40) }, () => random.int(256)));
        mutations.push("random bytes");
        break;
      }
      case 4: {
        // A field with a wire type that the schema does not expect.
        out = Buffer.concat([out, Buffer.from([(1 << 3) | random.pick([0, 1, 2, 5, 6, 7]), random.int(256)])]);
        mutations.push("odd wire type on field 1");
        break;
      }
      default: {
        out = Buffer.concat([out, out]);
        mutations.push("doubled");
      }
    }
  }
  return out;
}

const JSON_REPLACEMENTS = [
  '"\\ud800"',
  '"\\udfff"',
  "1e999",
  "-0",
  "null",
  "[]",
  "{}",
  '"x"',
  "true",
  "12345678901234567890",
  '"' + "y".repeat(2_000) + '"',
  '{"a":{"b":{"c":[[[[[]]]]]}}}',
];

function mutateJson(random: Random, text: string, mutations: string[]): Buffer {
  switch (random.int(5)) {
    case 0: {
      // Replace one value.
      const values = [...text.matchAll(/:(\s*)("(?:[^"\\]|\\.)*"|-?\d[\d.eE+-]*|true|false|null|\[\]|\{\})/g)];
      const replacement = random.pick(JSON_REPLACEMENTS);
      if (values.length === 0) {
        mutations.push(`add field with ${replacement.slice(0, 20)}`);
        return Buffer.from(`{"pageSize":${replacement}}`);
      }
      const match = random.pick(values);
      const at = (match.index ?? 0) + 1 + (match[1]?.length ?? 0);
      mutations.push(`value at ${at} -> ${replacement.slice(0, 20)}`);
      return Buffer.from(text.slice(0, at) + replacement + text.slice(at + (match[2]?.length ?? 0)));
    }
    case 1: {
      const at = random.int(text.length + 1);
      mutations.push(`truncate JSON to ${at}`);
      return Buffer.from(text.slice(0, at));
    }
    case 2: {
      const at = random.int(text.length + 1);
      const inserted = random.pick(["{", "}", '"', ",", "\\", "\u0000", "\ud800", ":", "]"]);
      mutations.push(`insert ${JSON.stringify(inserted)} at ${at}`);
      return Buffer.from(text.slice(0, at) + inserted + text.slice(at));
    }
    case 3:
      mutations.push("unknown field");
      return Buffer.from(text.replace(/^\{/, '{"noSuchField":1,'));
    default: {
      mutations.push("invalid UTF-8");
      return Buffer.concat([Buffer.from(text.slice(0, -1)), Buffer.from([0xff, 0xfe]), Buffer.from("}")]);
    }
  }
}

function frame(random: Random, message: Buffer, mutations: string[]): Buffer {
  if (!random.chance(0.2)) return envelope(message);
  switch (random.int(5)) {
    case 0: {
      const declared = random.pick([0, message.length + 1, message.length + 100, 2 ** 31, 2 ** 32 - 1]);
      const prefix = Buffer.alloc(5);
      prefix.writeUInt32BE(declared, 1);
      mutations.push(`length prefix ${declared}`);
      return Buffer.concat([prefix, message]);
    }
    case 1: {
      const flags = random.pick([1, 2, 0x80, 0xff]);
      mutations.push(`flags ${flags}`);
      return envelope(message, flags);
    }
    case 2:
      mutations.push("two messages");
      return Buffer.concat([envelope(message), envelope(message)]);
    case 3:
      mutations.push("no message");
      return Buffer.alloc(0);
    default:
      mutations.push("torn prefix");
      return envelope(message).subarray(0, random.int(5));
  }
}

const TIMEOUTS = ["1S", "0m", "1n", "99999999H", "5", "-1S", "1.5S", "abc", "100000000S", "10m"];
const CONNECT_TIMEOUTS = ["1000", "0", "-1", "abc", "99999999999", "1.5"];

function headersFor(random: Random, variant: Variant, mutations: string[]): Record<string, string> {
  const headers: Record<string, string> = {};
  let contentType = variant.contentType;
  if (random.chance(0.05)) {
    contentType = random.pick([
      `${contentType}; charset=utf-8`,
      contentType.toUpperCase(),
      "application/grpc-web-text",
      "text/plain",
      "application/xml",
      "",
      "application/grpc+xml",
    ]);
    mutations.push(`content-type ${JSON.stringify(contentType)}`);
  }
  headers["content-type"] = contentType;
  const caller = random.pick(["dashboard-bff", "api-gateway", "token-service", "provisioning", "", "nobody"]);
  if (caller !== "") headers.authorization = random.chance(0.95) ? `Bearer dev-${caller}` : `Basic ${caller}`;
  if (random.chance(0.7))
    headers["x-organization-id"] = random.pick([
      "org_fuzz_a",
      "org_fuzz_b",
      ...INTERESTING_STRINGS.filter(isHeaderSafe),
    ]);
  if (random.chance(0.1)) headers["x-actor"] = random.pick(["user:1", "u".repeat(201), "é"]);
  if (random.chance(0.1)) headers["x-request-id"] = random.pick(["fuzz-1", "bad id", "z".repeat(200)]);
  if (random.chance(0.1)) {
    const name = variant.contentType.startsWith("application/grpc") ? "grpc-timeout" : "connect-timeout-ms";
    headers[name] = random.pick(name === "grpc-timeout" ? TIMEOUTS : CONNECT_TIMEOUTS);
    mutations.push(`${name} ${headers[name]}`);
  }
  if (random.chance(0.05)) {
    const name = variant.contentType.startsWith("application/grpc")
      ? "grpc-encoding"
      : variant.enveloped
        ? "connect-content-encoding"
        : "content-encoding";
    headers[name] = random.pick(["gzip", "identity", "br", "snappy", "GZIP"]);
    mutations.push(`${name} ${headers[name]}`);
  }
  if (variant.http === "h2" && random.chance(0.05)) {
    headers[":authority"] = random.pick(["[zz", "a b", "", "127.0.0.1:99999", "ex ample.com"]);
    mutations.push(`:authority ${JSON.stringify(headers[":authority"])}`);
  }
  return headers;
}

function isHeaderSafe(value: string): boolean {
  return /^[\x20-\x7e]*$/.test(value);
}

/** The request for case `index` of the run seeded with `seed`. */
export function fuzzCase(seed: number, index: number, methods: readonly DescMethod[]): FuzzCase {
  const random = new Random((seed ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0);
  const variant = random.pick(VARIANTS);
  const mutations: string[] = [];
  let method = random.pick(methods);
  let path = `/${method.parent.typeName}/${method.name}`;
  if (random.chance(0.03)) {
    path = random.pick(["/connections.v1.ConnectionService/Nope", "/", "/x", `/${"p".repeat(500)}`]);
    mutations.push(`path ${path.slice(0, 40)}`);
    method = methods[0] as DescMethod;
  }
  const { binary, json } = randomMessage(random, method);
  let message: Buffer = variant.json ? Buffer.from(json) : Buffer.from(binary);
  if (random.chance(0.6)) {
    message = variant.json ? mutateJson(random, json, mutations) : mutateBytes(random, binary, mutations);
  }
  const body = variant.enveloped ? frame(random, message, mutations) : message;
  return { index, variant, path, headers: headersFor(random, variant, mutations), body, mutations };
}
