//! A paying HTTP client (DESIGN §7): on `402 Payment Required` it opens (or reuses) a channel
//! with the merchant the 402 names and retries the request with a channel payment in the
//! `PAYMENT-SIGNATURE` header, within spending caps per request and per merchant.
//!
//! The payment is signed and stored as spent by [`Customer::sign_payment`] before it is sent;
//! the merchant's `PAYMENT-RESPONSE` receipt acknowledges it. A request the merchant reverses
//! (its upstream failed) leaves credit, which the next request to that merchant uses.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paychan_core::bitcoin::{Amount, OutPoint};
use paychan_core::channel::Phase;
use paychan_core::paywall::{
    decode_header, encode_header, reason, ChannelPayment, PaymentPayload, PaymentRequired,
    PaymentResponse, Requirement, PAYMENT_REQUIRED, PAYMENT_RESPONSE, PAYMENT_SIGNATURE, SCHEME,
};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tracing::{debug, info};

use crate::{Customer, CustomerError};

/// Spending limits and channel defaults of a [`PayingClient`].
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// The most one request may cost; a dearer 402 is refused without paying.
    pub max_price: Amount,
    /// The most all channels with one merchant may ever carry (deposits are capped by it, and
    /// no payment takes a merchant's total above it).
    pub max_per_merchant: Amount,
    /// The deposit of a channel the client opens (the merchant's suggestion when `None`),
    /// kept within the merchant's limits and `max_per_merchant`.
    pub deposit: Option<Amount>,
    /// How long to wait for a new channel's funding to confirm.
    pub confirm_timeout: Duration,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            max_price: Amount::from_sat(1_000),
            max_per_merchant: Amount::from_sat(1_000_000),
            deposit: None,
            confirm_timeout: Duration::from_secs(1800),
        }
    }
}

/// What the client is doing, for progress displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Opening a channel with `peer`.
    Opening {
        /// The merchant's channel server.
        peer: String,
        /// The deposit.
        deposit: Amount,
    },
    /// Opened `channel`.
    Opened {
        /// The channel.
        channel: OutPoint,
    },
    /// The merchant waits for the funding to confirm.
    WaitingForConfirmation {
        /// The channel.
        channel: OutPoint,
        /// Seconds waited so far.
        waited_secs: u64,
    },
}

/// A progress callback.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// An answer, with what it cost.
#[derive(Debug, Clone)]
pub struct PaidResponse {
    /// The HTTP status.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Vec<u8>,
    /// New money signed for this request (zero when free or paid from credit… or not paid).
    pub paid: Amount,
    /// The price the merchant asked (zero when free).
    pub price: Amount,
    /// The merchant's receipt.
    pub receipt: Option<PaymentResponse>,
    /// The channel that paid.
    pub channel: Option<OutPoint>,
}

#[derive(Default)]
struct Book {
    /// The channel in use with this merchant.
    channel: Option<OutPoint>,
    /// Credit the merchant holds for us (charges it reversed).
    credit: Amount,
}

/// An HTTP client that pays on 402.
pub struct PayingClient {
    http: reqwest::Client,
    customer: Arc<Customer>,
    caps: Caps,
    books: tokio::sync::Mutex<HashMap<String, Book>>,
    progress: Option<ProgressFn>,
    log: Option<crate::spent::SpendingLog>,
}

impl std::fmt::Debug for PayingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayingClient").field("caps", &self.caps).finish_non_exhaustive()
    }
}

impl PayingClient {
    /// A client paying through `customer`'s channels.
    pub fn new(customer: Arc<Customer>, caps: Caps) -> Self {
        let http = Self::http(paychan_transport::tls::http_client_builder(None).ok());
        PayingClient {
            http,
            customer,
            caps,
            books: tokio::sync::Mutex::new(HashMap::new()),
            progress: None,
            log: None,
        }
    }

    fn http(builder: Option<reqwest::ClientBuilder>) -> reqwest::Client {
        builder
            .unwrap_or_else(reqwest::Client::builder)
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default()
    }

    /// Trusts the CA certificates in the PEM file `cacert` (a private CA) besides the system's
    /// roots for HTTPS merchants.
    ///
    /// # Errors
    /// [`CustomerError::Transport`] when the file cannot be used.
    pub fn with_cacert(mut self, cacert: &std::path::Path) -> Result<Self, CustomerError> {
        self.http = Self::http(Some(paychan_transport::tls::http_client_builder(Some(cacert))?));
        Ok(self)
    }

    /// Reports what the client does (opening a channel, waiting for a confirmation).
    pub fn with_progress(mut self, f: ProgressFn) -> Self {
        self.progress = Some(f);
        self
    }

    /// Appends every paid request to `log` (what was paid, to whom, for which URL).
    pub fn with_spending_log(mut self, log: crate::spent::SpendingLog) -> Self {
        self.log = Some(log);
        self
    }

    /// What `url` costs, paying nothing (see [`quote`]).
    ///
    /// # Errors
    /// As [`quote`].
    pub async fn quote(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &HeaderMap,
        body: Vec<u8>,
    ) -> Result<Quote, CustomerError> {
        quote(&self.http, method, url, headers, body).await
    }

    /// The customer paying.
    pub fn customer(&self) -> &Arc<Customer> {
        &self.customer
    }

    fn report(&self, p: Progress) {
        if let Some(f) = &self.progress {
            f(&p);
        }
    }

    /// `GET url`.
    ///
    /// # Errors
    /// As [`PayingClient::request`].
    pub async fn get(&self, url: &str) -> Result<PaidResponse, CustomerError> {
        self.request(reqwest::Method::GET, url, &HeaderMap::new(), Vec::new()).await
    }

    /// Sends a request; on 402 pays (within the caps) and sends it again. Any other answer is
    /// returned as it is, whatever its status.
    ///
    /// # Errors
    /// [`CustomerError::PriceTooHigh`] / [`CustomerError::SpendingCap`] before paying;
    /// [`CustomerError::Rejected`] when the merchant refuses the payment;
    /// [`CustomerError::Http`] for transport failures; channel errors.
    pub async fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &HeaderMap,
        body: Vec<u8>,
    ) -> Result<PaidResponse, CustomerError> {
        let first = send_on(&self.http, method.clone(), url, headers, body.clone(), None).await?;
        if first.status != 402 {
            return Ok(first);
        }
        let required = parse_402(&first.headers, &first.body)?;
        let requirement = paychan_requirement(&required)?;
        let price = requirement.price()?;
        if price > self.caps.max_price {
            return Err(CustomerError::PriceTooHigh { price, max: self.caps.max_price });
        }
        let peer = requirement.extra.peer.clone();
        let mut tried_fresh = false;
        loop {
            let (channel, payment, paid) = self.sign_for(&peer, requirement, price).await?;
            let header = encode_header(&PaymentPayload::paying(&required, requirement, payment))
                .ok()
                .and_then(|h| HeaderValue::from_str(&h).ok())
                .ok_or(CustomerError::Protocol("cannot encode the payment header"))?;
            let started = Instant::now();
            loop {
                let mut resp =
                    send_on(&self.http, method.clone(), url, headers, body.clone(), Some(&header))
                        .await?;
                resp.paid = paid;
                resp.price = price;
                resp.channel = Some(channel);
                if resp.status != 402 {
                    self.receipt(&peer, channel, &mut resp).await;
                    self.log_spent(&method, url, requirement, &resp).await;
                    return Ok(resp);
                }
                let (code, error) = refusal_of(&resp.headers, &resp.body)?;
                match code {
                    // Not open yet: the merchant waits for the funding's confirmations.
                    Some(102) if started.elapsed() < self.caps.confirm_timeout => {
                        self.report(Progress::WaitingForConfirmation {
                            channel,
                            waited_secs: started.elapsed().as_secs(),
                        });
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    // Our credit was spent by a concurrent request, or the merchant counts
                    // this total as used (it restarted while it was in flight): pay anew.
                    Some(112 | 113) if !tried_fresh => {
                        tried_fresh = true;
                        self.books.lock().await.entry(peer.clone()).or_default().credit =
                            Amount::ZERO;
                        break;
                    }
                    // Past the cutoff, or full: a new channel.
                    Some(103 | 105) if !tried_fresh => {
                        tried_fresh = true;
                        let mut books = self.books.lock().await;
                        let book = books.entry(peer.clone()).or_default();
                        if book.channel == Some(channel) {
                            *book = Book::default();
                        }
                        break;
                    }
                    code => {
                        return Err(CustomerError::Rejected {
                            code: code.unwrap_or(0),
                            message: error,
                        })
                    }
                }
            }
        }
    }

    /// Appends a paid request to the spending log; a log that cannot be written is said, not
    /// fatal (the channel store has the payment).
    async fn log_spent(
        &self,
        method: &reqwest::Method,
        url: &str,
        requirement: &Requirement,
        resp: &PaidResponse,
    ) {
        let Some(log) = &self.log else { return };
        let entry = crate::spent::Spent {
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            method: method.to_string(),
            url: url.to_string(),
            merchant: requirement.pay_to.clone(),
            channel: resp.channel.map(|c| c.to_string()).unwrap_or_default(),
            price_sat: resp.price.to_sat(),
            paid_sat: resp.paid.to_sat(),
            status: resp.status,
            charged: resp.receipt.as_ref().is_some_and(|r| r.success),
        };
        if let Err(e) = log.append(&entry).await {
            tracing::warn!(error = %e, "a paid request is not in the spending log");
        }
    }

    async fn receipt(&self, peer: &str, channel: OutPoint, resp: &mut PaidResponse) {
        let Some(r) = resp
            .headers
            .get(PAYMENT_RESPONSE)
            .and_then(|h| decode_header::<PaymentResponse>(h.as_bytes()).ok())
        else {
            return;
        };
        match r.extra.as_ref().map(|x| x.amounts()) {
            Some(Ok((total, _))) => {
                if let Err(e) = self.customer.acknowledge(channel, total).await {
                    debug!(%channel, error = %e, "receipt for a total never signed");
                }
            }
            Some(Err(e)) => debug!(%channel, error = %e, "unreadable receipt"),
            None => debug!(%channel, "receipt without the channel's totals"),
        }
        if !r.success {
            // Reversed: the price stays with the merchant as credit for the next request.
            let mut books = self.books.lock().await;
            let book = books.entry(peer.to_string()).or_default();
            book.credit = book.credit.checked_add(resp.price).unwrap_or(book.credit);
        }
        resp.receipt = Some(r);
    }

    /// Signs a payment for `price` to the merchant at `peer`, opening a channel if needed.
    /// Returns the channel, the payment and the new money signed.
    async fn sign_for(
        &self,
        peer: &str,
        requirement: &Requirement,
        price: Amount,
    ) -> Result<(OutPoint, ChannelPayment, Amount), CustomerError> {
        // One merchant's book is locked while its cap is checked and the payment signed, so
        // concurrent requests never overshoot the cap.
        let mut books = self.books.lock().await;
        let book = books.entry(peer.to_string()).or_default();
        let spent = self.spent_with(peer).await;
        let increment = price.checked_sub(book.credit).unwrap_or(Amount::ZERO).max(Amount::ONE_SAT);
        if spent + increment > self.caps.max_per_merchant {
            return Err(CustomerError::SpendingCap { spent, cap: self.caps.max_per_merchant });
        }
        let usable = |s: &crate::ChannelStatus| {
            s.peer == peer
                && s.phase == Phase::Open
                && s.capacity - s.signed.min(s.capacity) >= increment
        };
        let mut channel = None;
        if let Some(id) = book.channel {
            if self.customer.status(id).await.is_ok_and(|s| usable(&s)) {
                channel = Some(id);
            }
        }
        if channel.is_none() {
            channel = self.customer.list().await.into_iter().find(|s| usable(s)).map(|s| s.id);
        }
        let channel = match channel {
            Some(c) => c,
            None => {
                let limits = &requirement.extra.policy;
                let room = self.caps.max_per_merchant - spent;
                let wanted = self.caps.deposit.unwrap_or(Amount::from_sat(limits.default_deposit));
                let deposit = wanted.min(room).min(Amount::from_sat(limits.max_deposit));
                if deposit < Amount::from_sat(limits.min_deposit) || deposit < increment {
                    return Err(CustomerError::SpendingCap {
                        spent,
                        cap: self.caps.max_per_merchant,
                    });
                }
                self.report(Progress::Opening { peer: peer.to_string(), deposit });
                info!(%peer, %deposit, "opening a channel to pay");
                // A dispute channel (no expiry) when the merchant offers them.
                let kind = if limits.min_dispute_blocks > 0 {
                    crate::ChannelKind::Dispute { blocks: None }
                } else {
                    crate::ChannelKind::Cltv { life_secs: None }
                };
                let id = self.customer.open_kind(peer, deposit, kind).await?;
                self.report(Progress::Opened { channel: id });
                id
            }
        };
        book.channel = Some(channel);
        let pay = self.customer.sign_payment(channel, increment).await?;
        book.credit = book.credit.checked_sub(price - increment).unwrap_or(Amount::ZERO);
        drop(books);
        let payment = ChannelPayment::new(channel, Amount::from_sat(pay.total_sat), &pay.signature);
        Ok((channel, payment, increment))
    }

    /// Signs (and stores as spent) a payment of one x402 requirement, within the caps: for an
    /// x402 SDK's scheme plugin, which wraps it in the `PaymentPayload` itself. Opens (or
    /// reuses) a channel with the merchant the requirement names.
    ///
    /// # Errors
    /// [`CustomerError::Protocol`] for a requirement of another scheme;
    /// [`CustomerError::PriceTooHigh`] / [`CustomerError::SpendingCap`] before anything is
    /// signed; channel errors.
    pub async fn pay_requirement(
        &self,
        requirement: &Requirement,
    ) -> Result<ChannelPayment, CustomerError> {
        if requirement.scheme != SCHEME {
            return Err(CustomerError::Protocol("not a paychan requirement"));
        }
        let price = requirement.price()?;
        if price > self.caps.max_price {
            return Err(CustomerError::PriceTooHigh { price, max: self.caps.max_price });
        }
        let peer = requirement.extra.peer.clone();
        let (_, payment, _) = self.sign_for(&peer, requirement, price).await?;
        Ok(payment)
    }

    /// Everything signed to the merchant at `peer`, over all channels.
    async fn spent_with(&self, peer: &str) -> Amount {
        self.customer
            .list()
            .await
            .iter()
            .filter(|s| s.peer == peer)
            .map(|s| s.signed)
            .fold(Amount::ZERO, |a, b| a.checked_add(b).unwrap_or(Amount::MAX_MONEY))
    }
}

/// Sends one request with `http`, with the payment header when given.
async fn send_on(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    headers: &HeaderMap,
    body: Vec<u8>,
    payment: Option<&HeaderValue>,
) -> Result<PaidResponse, CustomerError> {
    let mut req = http.request(method, url).headers(headers.clone());
    if !body.is_empty() {
        req = req.body(body);
    }
    if let Some(p) = payment {
        req = req.header(HeaderName::from_static(PAYMENT_SIGNATURE), p.clone());
    }
    let resp = req.send().await.map_err(|e| CustomerError::Http(error_chain(&e)))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.map_err(|e| CustomerError::Http(e.to_string()))?.to_vec();
    Ok(PaidResponse {
        status,
        headers,
        body,
        paid: Amount::ZERO,
        price: Amount::ZERO,
        receipt: None,
        channel: None,
    })
}

/// What `url` costs, paying nothing and needing no channel or wallet: the request is sent
/// once with `http`; a `402`'s paychan requirement comes back as [`Quote::Price`], any other
/// answer as [`Quote::Answer`].
///
/// # Errors
/// [`CustomerError::Http`]; [`CustomerError::Protocol`] for a 402 without a paychan way to
/// pay.
pub async fn quote(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    headers: &HeaderMap,
    body: Vec<u8>,
) -> Result<Quote, CustomerError> {
    let first = send_on(http, method, url, headers, body, None).await?;
    if first.status != 402 {
        return Ok(Quote::Answer(first));
    }
    let required = parse_402(&first.headers, &first.body)?;
    let requirement = paychan_requirement(&required)?.clone();
    Ok(Quote::Price { price: requirement.price()?, requirement, resource: required.resource })
}

/// The 402's paychan way to pay.
fn paychan_requirement(required: &PaymentRequired) -> Result<&Requirement, CustomerError> {
    required
        .accepts
        .iter()
        .find(|r| r.scheme == SCHEME)
        .ok_or(CustomerError::Protocol("the 402 offers no paychan payment"))
}

/// What a resource costs ([`quote`]).
#[derive(Debug)]
pub enum Quote {
    /// The server answered without asking to pay.
    Answer(PaidResponse),
    /// The server asks `price` (nothing was paid).
    Price {
        /// The price, sat.
        price: Amount,
        /// The paychan requirement of the 402.
        requirement: Requirement,
        /// The resource the 402 names.
        resource: paychan_core::paywall::Resource,
    },
}

/// Why a paid request was refused: the core error code of the `PAYMENT-RESPONSE`'s
/// `errorReason` (0 for a reason this build does not know) and its message.
fn refusal_of(headers: &HeaderMap, body: &[u8]) -> Result<(Option<u32>, String), CustomerError> {
    if let Some(r) = headers
        .get(PAYMENT_RESPONSE)
        .and_then(|h| decode_header::<PaymentResponse>(h.as_bytes()).ok())
        .filter(|r| !r.success)
    {
        let reason = r.error_reason.unwrap_or_default();
        let message = r.error_message.unwrap_or_else(|| reason.clone());
        return Ok((Some(reason::code_of(&reason).unwrap_or(0)), message));
    }
    let refusal = parse_402(headers, body)?;
    Ok((None, refusal.error.unwrap_or_default()))
}

/// The 402's `PAYMENT-REQUIRED` (or, failing that, its JSON body).
fn parse_402(headers: &HeaderMap, body: &[u8]) -> Result<PaymentRequired, CustomerError> {
    if let Some(h) = headers.get(PAYMENT_REQUIRED) {
        return Ok(decode_header(h.as_bytes())?);
    }
    serde_json::from_slice(body)
        .map_err(|_| CustomerError::Protocol("a 402 without a PAYMENT-REQUIRED header"))
}

/// An error with its causes (`error sending request …: … invalid peer certificate:
/// UnknownIssuer`): reqwest's own text names none of them.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}
