"""paychan's x402 headers through the x402 reference SDK for Python (PyPI `x402`).

Reads a JSON job on stdin:
  {"required": [b64...], "payloads": [b64...], "responses": [b64...],
   "sign": [{"channel": str, "total": str, "signature": str}, ...]}

For each header paychan emitted: decode it with the SDK's own decoder (its pydantic models
validate every field's presence and type), dump the model again and require that nothing was
dropped or changed (a field the spec does not define would be dropped). Then build with the SDK:
one PaymentPayload per `sign` item, paying the first requirement of the first 402 (the SDK's own
model of it as `accepted`), and the SDK's re-encoding of every PaymentRequired and SettleResponse,
for paychan to decode.

Writes a JSON report on stdout: {"checked": {...}, "errors": [...], "sdk_payloads": [...],
"sdk_required": [...], "sdk_responses": [...], "sdk_version": str}.
"""

import base64
import json
import sys
from importlib.metadata import version

from x402.http.utils import (
    decode_payment_required_header,
    decode_payment_response_header,
    decode_payment_signature_header,
    encode_payment_required_header,
    encode_payment_response_header,
    encode_payment_signature_header,
)
from x402.schemas import PaymentPayload, PaymentRequired, SettleResponse


def raw(header: str) -> dict:
    return json.loads(base64.b64decode(header))


def strip_none(v):
    if isinstance(v, dict):
        return {k: strip_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [strip_none(x) for x in v]
    return v


def check(kind: str, header: str, decode, expected_type, errors: list):
    try:
        model = decode(header)
    except Exception as e:  # the SDK refused it
        errors.append({"kind": kind, "header": raw_or(header), "error": f"{type(e).__name__}: {e}"})
        return None
    if not isinstance(model, expected_type):
        errors.append({"kind": kind, "error": f"decoded as {type(model).__name__}"})
        return None
    dumped = strip_none(model.model_dump(by_alias=True, exclude_none=True))
    original = strip_none(raw(header))
    if dumped != original:
        errors.append({"kind": kind, "error": "the SDK's model differs from the header",
                       "header": original, "sdk": dumped})
    return model


def raw_or(header: str):
    try:
        return raw(header)
    except Exception:
        return header


def facilitator(job: dict) -> dict:
    """Drive a paychan facilitator with the SDK's own facilitator client: supported, then
    verify and settle of each payment (a PAYMENT-SIGNATURE header value) against the
    requirements of the first 402."""
    from x402.http import HTTPFacilitatorClientSync

    token = job["token"]
    auth = {"Authorization": f"Bearer {token}"}
    client = HTTPFacilitatorClientSync(
        {"url": job["url"], "create_headers": lambda: {"verify": auth, "settle": auth, "supported": {}}}
    )
    supported = client.get_supported()
    requirements = decode_payment_required_header(job["required"]).accepts[0]
    results = []
    for header in job["payments"]:
        payload = decode_payment_signature_header(header)
        v = client.verify(payload, requirements)
        s = client.settle(payload, requirements)
        again = client.settle(payload, requirements)
        results.append({
            "verify": v.model_dump(by_alias=True, exclude_none=True),
            "settle": s.model_dump(by_alias=True, exclude_none=True),
            "settle_again": again.model_dump(by_alias=True, exclude_none=True),
        })
    return {
        "sdk_version": version("x402"),
        "supported": supported.model_dump(by_alias=True, exclude_none=True),
        "results": results,
    }


def main():
    job = json.load(sys.stdin)
    if "facilitator" in job:
        json.dump(facilitator(job["facilitator"]), sys.stdout)
        return
    errors = []
    required = [check("PAYMENT-REQUIRED", h, decode_payment_required_header, PaymentRequired, errors)
                for h in job["required"]]
    for h in job["payloads"]:
        check("PAYMENT-SIGNATURE", h, decode_payment_signature_header, PaymentPayload, errors)
    responses = [check("PAYMENT-RESPONSE", h, decode_payment_response_header, SettleResponse, errors)
                 for h in job["responses"]]

    sdk_payloads = []
    first = required[0] if required else None
    if first is not None:
        accepted = first.accepts[0]
        for s in job["sign"]:
            payload = PaymentPayload(
                x402_version=2,
                resource=first.resource,
                accepted=accepted,
                payload={"channel": s["channel"], "total": s["total"], "signature": s["signature"]},
            )
            sdk_payloads.append(encode_payment_signature_header(payload))
    report = {
        "sdk_version": version("x402"),
        "checked": {"required": len(job["required"]), "payloads": len(job["payloads"]),
                    "responses": len(job["responses"])},
        "errors": errors,
        "sdk_payloads": sdk_payloads,
        "sdk_required": [encode_payment_required_header(m) for m in required if m is not None],
        "sdk_responses": [encode_payment_response_header(m) for m in responses if m is not None],
    }
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
