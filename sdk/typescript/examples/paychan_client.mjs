// A stock x402 client (@x402/core's x402Client and x402HTTPClient over fetch) paying with
// paychan's scheme plugin.
//
//   node paychan_client.mjs URL NETWORK PAYCHAN_ARGS...
//
// Prints the status, the body and the decoded PAYMENT-RESPONSE as JSON.

import { x402Client, x402HTTPClient } from "@x402/core/client";
import { PaychanClientScheme, spendControls } from "../src/index.mjs";

const [url, network, ...paychan] = process.argv.slice(2);
const client = new x402Client()
  .register(network, new PaychanClientScheme({ paychan, maxPriceSat: 100 }))
  .setSpendControls(spendControls(network, 100));
const http = new x402HTTPClient(client);

let r = await fetch(url);
if (r.status === 402) {
  const body = await r.json().catch(() => undefined);
  const required = http.getPaymentRequiredResponse((n) => r.headers.get(n), body);
  const payload = await http.createPaymentPayload(required);
  r = await fetch(url, { headers: http.encodePaymentSignatureHeader(payload) });
}
const text = await r.text();
let receipt = null;
try {
  receipt = http.getPaymentSettleResponse((n) => r.headers.get(n));
} catch {
  receipt = null;
}
process.stdout.write(JSON.stringify({ status: r.status, body: text, payment_response: receipt }));
