//! TLS in tests: certificates made in the test (a private CA, a certificate for
//! `127.0.0.1`/`localhost` signed by it, and another CA that did not sign it: the "wrong
//! certificate" case), and a TLS terminator on loopback in front of a plain TCP service.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use crate::HarnessError;

/// The PEM files of a test PKI, in one directory.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA that signed [`TestPki::cert`].
    pub ca: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca: PathBuf,
    /// The server's certificate for `127.0.0.1` and `localhost`.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

impl TestPki {
    /// Writes `ca.pem`, `other-ca.pem`, `cert.pem` and `key.pem` into `dir`.
    ///
    /// # Errors
    /// [`HarnessError::Certificate`] or [`HarnessError::Io`].
    pub fn write(dir: &Path) -> Result<TestPki, HarnessError> {
        let ca = |name: &str| -> Result<_, rcgen::Error> {
            let mut p = CertificateParams::new(Vec::<String>::new())?;
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate()?;
            let cert = p.self_signed(&key)?;
            Ok((cert, key))
        };
        let (ca_cert, ca_key) = ca("paychan test CA")?;
        let (other, _) = ca("another CA")?;
        let leaf_key = KeyPair::generate()?;
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?
            .signed_by(&leaf_key, &ca_cert, &ca_key)?;
        let pki = TestPki {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&pki.ca, ca_cert.pem())?;
        std::fs::write(&pki.other_ca, other.pem())?;
        std::fs::write(&pki.cert, leaf.pem())?;
        std::fs::write(&pki.key, leaf_key.serialize_pem())?;
        Ok(pki)
    }
}

/// A TLS terminator on 127.0.0.1 (as stunnel or nginx would stand in front of a node's RPC):
/// accepts TLS with a [`TestPki`] certificate and forwards the bytes to a plain TCP target.
/// It runs on its own runtime, so blocking clients can use it; dropping it stops it.
pub struct TlsTerminator {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    cut: tokio::sync::broadcast::Sender<()>,
    _rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for TlsTerminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTerminator").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl TlsTerminator {
    /// Starts a terminator for `target` with `pki`'s certificate.
    ///
    /// # Errors
    /// [`HarnessError::Transport`] (the certificate) or [`HarnessError::Io`].
    pub fn start(target: SocketAddr, pki: &TestPki) -> Result<TlsTerminator, HarnessError> {
        let rt =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let config = paychan_transport::tls::server_config(&pki.cert, &pki.key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let (cut, _) = tokio::sync::broadcast::channel(4);
        let (count, cuts) = (accepted.clone(), cut.clone());
        rt.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (acceptor, mut cut) = (acceptor.clone(), cuts.subscribe());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let Ok(mut plain) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut tls, &mut plain) => {}
                        _ = cut.recv() => {}
                    }
                });
            }
        });
        Ok(TlsTerminator { addr, accepted, cut, _rt: rt })
    }

    /// Where it listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://<addr>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// How many TCP connections it accepted so far.
    #[must_use]
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Closes every open connection (as a terminator closes idle ones).
    pub fn cut(&self) {
        let _ = self.cut.send(());
    }
}
