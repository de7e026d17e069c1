//! TLS for the HTTP sides (`rustls` on `ring`): the merchant's listener from PEM files, and
//! clients that trust the system's roots plus, optionally, a private CA (`--cacert`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::TransportError;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(what: &Path, e: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(format!("{}: {e}", what.display()))
}

/// The certificates of a PEM file, in order (the leaf first for a chain).
///
/// # Errors
/// [`TransportError::Tls`] naming the file: unreadable, or no certificate in it.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(path, e))?;
    if certs.is_empty() {
        return Err(tls_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// A server configuration from a PEM certificate chain and its PEM private key.
///
/// # Errors
/// [`TransportError::Tls`] naming the file at fault: unreadable, not PEM, or a key that does
/// not match the certificate.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TransportError> {
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_error(key, e))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(cert, e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| tls_error(cert, e))?;
    Ok(Arc::new(config))
}

/// A client configuration trusting the system's roots and, if given, the CA certificates in
/// `cacert` (a private CA).
///
/// # Errors
/// [`TransportError::Tls`]: `cacert` unreadable or holding no usable certificate; no root at
/// all (no system roots and no `cacert`).
pub fn client_config(cacert: Option<&Path>) -> Result<rustls::ClientConfig, TransportError> {
    let mut roots = rustls::RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    for cert in system.certs {
        // A system certificate that does not parse is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if let Some(path) = cacert {
        for cert in certificates(path)? {
            roots.add(cert).map_err(|e| tls_error(path, e))?;
        }
    }
    if roots.is_empty() {
        return Err(TransportError::Tls(
            "no trusted root certificates: none found on the system; give --cacert".into(),
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// An HTTP client builder whose HTTPS trusts the system's roots and, if given, `cacert`;
/// falls back to no roots (HTTPS then fails, naming the unknown issuer) when the system has
/// none and no `cacert` is given.
///
/// # Errors
/// [`TransportError::Tls`] when `cacert` cannot be used.
pub fn http_client_builder(
    cacert: Option<&Path>,
) -> Result<reqwest::ClientBuilder, TransportError> {
    match client_config(cacert) {
        Ok(config) => Ok(reqwest::Client::builder().use_preconfigured_tls(config)),
        Err(e) if cacert.is_some() => Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "HTTPS will trust no certificate");
            Ok(reqwest::Client::builder())
        }
    }
}
