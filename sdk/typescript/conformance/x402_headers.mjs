// paychan's x402 headers through the x402 reference SDK for TypeScript (npm @x402/core).
//
// Reads the same JSON job as sdk/python/conformance/x402_headers.py on stdin ({required,
// payloads, responses}): each header is decoded with the SDK's decoder and validated with its
// zod schema (PaymentRequired, PaymentPayload) or checked against its SettleResponse type; the
// SDK's re-encoding must decode to the same JSON. Writes {sdk_version, checked, errors}.

import { readFileSync } from "node:fs";
import {
  decodePaymentRequiredHeader,
  decodePaymentResponseHeader,
  decodePaymentSignatureHeader,
  encodePaymentRequiredHeader,
  encodePaymentResponseHeader,
  encodePaymentSignatureHeader,
} from "@x402/core/http";
import { parsePaymentPayload, parsePaymentRequired } from "@x402/core/schemas";

const job = JSON.parse(readFileSync(0, "utf8"));
const errors = [];
const raw = (h) => JSON.parse(Buffer.from(h, "base64").toString("utf8"));
const same = (a, b) => JSON.stringify(sorted(a)) === JSON.stringify(sorted(b));
function sorted(v) {
  if (Array.isArray(v)) return v.map(sorted);
  if (v && typeof v === "object") {
    return Object.fromEntries(Object.keys(v).sort().filter((k) => v[k] !== undefined && v[k] !== null).map((k) => [k, sorted(v[k])]));
  }
  return v;
}

function check(kind, header, decode, validate, encode) {
  try {
    const decoded = decode(header);
    const verdict = validate(decoded);
    if (verdict !== true) {
      errors.push({ kind, header: raw(header), error: verdict });
      return;
    }
    if (!same(decode(encode(decoded)), raw(header))) {
      errors.push({ kind, header: raw(header), error: "the SDK's re-encoding differs" });
    }
  } catch (e) {
    errors.push({ kind, header: header.slice(0, 200), error: String(e) });
  }
}

// The SDK's zod schema must accept the value and keep every field (a field the schema does
// not know would be stripped).
const zod = (parse) => (v) => {
  const r = parse(v);
  if (!r.success) return JSON.stringify(r.error.issues);
  return same(r.data, v) ? true : `the schema keeps ${JSON.stringify(r.data)}`;
};

// SettleResponse has no zod schema in @x402/core: its type, field by field.
function settleResponse(v) {
  const bad = [];
  if (typeof v.success !== "boolean") bad.push("success is not a boolean");
  if (typeof v.transaction !== "string") bad.push("transaction is not a string");
  if (typeof v.network !== "string" || !v.network.includes(":")) bad.push("network is not CAIP-2");
  for (const k of ["errorReason", "errorMessage", "payer", "amount"]) {
    if (v[k] !== undefined && typeof v[k] !== "string") bad.push(`${k} is not a string`);
  }
  if (v.extra !== undefined && (typeof v.extra !== "object" || v.extra === null)) bad.push("extra is not an object");
  return bad.length === 0 ? true : bad.join("; ");
}

for (const h of job.required) check("PAYMENT-REQUIRED", h, decodePaymentRequiredHeader, zod(parsePaymentRequired), encodePaymentRequiredHeader);
for (const h of job.payloads) check("PAYMENT-SIGNATURE", h, decodePaymentSignatureHeader, zod(parsePaymentPayload), encodePaymentSignatureHeader);
for (const h of job.responses) check("PAYMENT-RESPONSE", h, decodePaymentResponseHeader, settleResponse, encodePaymentResponseHeader);

const version = JSON.parse(
  readFileSync(new URL("../node_modules/@x402/core/package.json", import.meta.url), "utf8"),
).version;
process.stdout.write(JSON.stringify({
  sdk_version: version,
  checked: { required: job.required.length, payloads: job.payloads.length, responses: job.responses.length },
  errors,
}));
