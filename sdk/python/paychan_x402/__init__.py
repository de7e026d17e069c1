"""paychan's x402 scheme ("paychan": Bitcoin payment channels) for the x402 reference SDK for
Python (PyPI `x402`).

* `PaychanClientScheme` — register it on an `x402Client(Sync)`: it pays a requirement with
  `paychan sign-payment` (the customer's channels, opened or reused; every payment stored as
  spent before it is sent).
* `PaychanServerScheme` — register it on an `x402ResourceServer(Sync)` whose facilitator is a
  paychan merchant (`https://merchant/x402`): prices in satoshis, the merchant's channel details
  (`extra.peer`, `extra.policy`) from the facilitator's `/supported`, the "upfront" flow (the
  charge is durable before the handler runs).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Sequence
from typing import Any

from x402.schemas import AssetAmount, PaymentRequirements, SupportedKind

SCHEME = "paychan"
BITCOIN_MAINNET = "bip122:000000000019d6689c085ae165831e93"


def asset(network: str) -> str:
    """CAIP-19 native bitcoin on `network` (coin type 0 on mainnet, 1 on test networks)."""
    return f"{network}/slip44:{0 if network == BITCOIN_MAINNET else 1}"


def spend_controls(network: str, max_sat_per_payment: int) -> dict[str, Any]:
    """The x402 client's spend controls that allow bitcoin on `network` (not one of the SDK's
    default assets) up to `max_sat_per_payment` satoshis a payment:
    `client.set_spend_controls(spend_controls(network, 100))`."""
    return {"allowed_assets": [{"network": network, "asset": asset(network),
                                "max_amount_per_payment": str(int(max_sat_per_payment))}]}


class PaychanClientScheme:
    """Client side: signs channel payments with the `paychan` command line."""

    scheme = SCHEME

    def __init__(self, paychan: Sequence[str] = ("paychan",), max_price_sat: int | None = None,
                 timeout_s: float = 1800.0) -> None:
        self._cmd = list(paychan)
        self._max_price = max_price_sat
        self._timeout = timeout_s

    def create_payment_payload(self, requirements: PaymentRequirements) -> dict[str, Any]:
        req = requirements.model_dump(by_alias=True, exclude_none=True)
        args = self._cmd + ["sign-payment", "--requirement", json.dumps(req)]
        if self._max_price is not None:
            args += ["--max-price", f"{self._max_price}sat"]
        out = subprocess.run(args, capture_output=True, text=True, timeout=self._timeout, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"paychan sign-payment failed ({out.returncode}): {out.stderr.strip()}")
        payment = json.loads(out.stdout)
        return {"channel": payment["channel"], "total": payment["total"], "signature": payment["signature"]}


_SAT = re.compile(r"^\s*(\d+)\s*(sat|sats)?\s*$")


class PaychanServerScheme:
    """Server side: prices in satoshis, requirements completed from the facilitator."""

    scheme = SCHEME
    default_asset_transfer_method = "default"
    payment_flows = {"default": {"supported": ("upfront",), "default": "upfront"}}

    def parse_price(self, price: Any, network: str) -> AssetAmount:
        if isinstance(price, AssetAmount):
            return price
        if isinstance(price, bool) or not isinstance(price, (int, str)):
            raise ValueError(f"a paychan price is a whole number of satoshis, not {price!r}")
        m = _SAT.match(str(price))
        if not m:
            raise ValueError(f"a paychan price is satoshis like 21 or '21 sat', not {price!r}")
        return AssetAmount(amount=str(int(m.group(1))), asset=asset(network))

    def enhance_payment_requirements(self, requirements: PaymentRequirements,
                                     supported_kind: SupportedKind,
                                     extensions: list[str]) -> PaymentRequirements:
        # Where channels are opened and the merchant's limits, as the facilitator says.
        extra = dict(supported_kind.extra or {})
        extra.update(requirements.extra or {})
        requirements.extra = extra
        return requirements
