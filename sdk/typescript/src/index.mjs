// paychan's x402 scheme ("paychan": Bitcoin payment channels) for the x402 TypeScript SDK
// (npm @x402/core): the client side. Register it on an x402Client:
//
//   new x402Client()
//     .register(network, new PaychanClientScheme({ paychan: ["paychan", "--home", home] }))
//     .setSpendControls(spendControls(network, 100));
//
// It pays a requirement with `paychan sign-payment` (the customer's channels, opened or reused;
// every payment stored as spent before it is sent).

import { execFile } from "node:child_process";

export const SCHEME = "paychan";
const BITCOIN_MAINNET = "bip122:000000000019d6689c085ae165831e93";

/** CAIP-19 native bitcoin on `network` (coin type 0 on mainnet, 1 on test networks). */
export function asset(network) {
  return `${network}/slip44:${network === BITCOIN_MAINNET ? 0 : 1}`;
}

/** Spend controls allowing bitcoin on `network` up to `maxSatPerPayment` satoshis a payment. */
export function spendControls(network, maxSatPerPayment) {
  return {
    allowedAssets: [
      { network, asset: asset(network), maxAmountPerPayment: String(Math.trunc(maxSatPerPayment)) },
    ],
  };
}

export class PaychanClientScheme {
  /**
   * @param {{ paychan?: string[], maxPriceSat?: number, timeoutMs?: number }} [options]
   */
  constructor(options = {}) {
    this.scheme = SCHEME;
    this.paychan = options.paychan ?? ["paychan"];
    this.maxPriceSat = options.maxPriceSat;
    this.timeoutMs = options.timeoutMs ?? 1_800_000;
  }

  /** The scheme's payload for `requirements`: `{ channel, total, signature }`. */
  async createPaymentPayload(x402Version, requirements) {
    const [cmd, ...pre] = this.paychan;
    const args = [...pre, "sign-payment", "--requirement", JSON.stringify(requirements)];
    if (this.maxPriceSat !== undefined) args.push("--max-price", `${this.maxPriceSat}sat`);
    const stdout = await new Promise((resolve, reject) => {
      execFile(cmd, args, { timeout: this.timeoutMs }, (err, out, errOut) => {
        if (err) reject(new Error(`paychan sign-payment failed: ${String(errOut).trim() || err.message}`));
        else resolve(out);
      });
    });
    const p = JSON.parse(stdout);
    return { x402Version, payload: { channel: p.channel, total: p.total, signature: p.signature } };
  }
}
