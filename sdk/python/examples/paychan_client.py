"""A stock x402 client (requests and the SDK's adapter) paying with the paychan scheme plugin.

    python paychan_client.py URL NETWORK PAYCHAN_ARGS...

PAYCHAN_ARGS is the `paychan` command with its global options (home, node), e.g.
`paychan --home ~/.paychan`. Prints the status, the body and the decoded PAYMENT-RESPONSE.
"""

import base64
import json
import sys

import requests
from x402 import x402ClientSync
from x402.http.clients import wrapRequestsWithPayment

from paychan_x402 import PaychanClientScheme, spend_controls

url, network, *paychan = sys.argv[1:]
client = x402ClientSync()
client.register(network, PaychanClientScheme(paychan=paychan, max_price_sat=100))
client.set_spend_controls(spend_controls(network, 100))
session = wrapRequestsWithPayment(requests.Session(), client)
r = session.get(url, timeout=120)
receipt = r.headers.get("payment-response")
print(json.dumps({
    "status": r.status_code,
    "body": r.text,
    "payment_response": json.loads(base64.b64decode(receipt)) if receipt else None,
}))
