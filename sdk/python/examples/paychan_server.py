"""A stock x402 resource server (Flask and the SDK's middleware) charging through a paychan
merchant's facilitator with the paychan scheme plugin.

    python paychan_server.py FACILITATOR_URL TOKEN PAY_TO NETWORK PORT
"""

import sys

from flask import Flask
from x402 import x402ResourceServerSync
from x402.http import HTTPFacilitatorClientSync
from x402.http.middleware.flask import PaymentMiddleware

from paychan_x402 import PaychanServerScheme

facilitator_url, token, pay_to, network, port = sys.argv[1:6]
app = Flask(__name__)


@app.route("/report")
def report():
    return "a report worth 21 satoshis\n"


auth = {"Authorization": f"Bearer {token}"}
facilitator = HTTPFacilitatorClientSync(
    {"url": facilitator_url, "create_headers": lambda: {"verify": auth, "settle": auth, "supported": {}}}
)
server = x402ResourceServerSync(facilitator)
server.register(network, PaychanServerScheme())
routes = {
    "GET /report": {
        "accepts": {"scheme": "paychan", "payTo": pay_to, "price": 21, "network": network,
                    "maxTimeoutSeconds": 60},
        "description": "a paid report",
    }
}
PaymentMiddleware(app, routes, server)
print(f"listening on {port}", flush=True)
app.run(host="127.0.0.1", port=int(port))
