//! TLS of the connections to a bus (`rediss://host:port`): the CA to trust and an optional
//! client certificate, used by redis-rs for the connections it makes and by this crate's own
//! read connection (`resp::RawConnection`), over the same rustls (ring).

use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, RedisError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::Path;
use std::sync::Arc;

/// Certificates for `rediss://` connections, in PEM. Its `Debug` shows no key material.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// The CA that signed the servers' certificates; `None`: the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate chain and its private key, for servers that ask for one
    /// (`tls-auth-clients yes`, as `dualbus redis up --tls` starts them).
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca", &self.ca_pem.as_ref().map(|_| "PEM"))
            .field(
                "client",
                &self.client.as_ref().map(|_| "certificate and key"),
            )
            .finish()
    }
}

impl TlsConfig {
    /// Reads the PEM files (each `None` when not given).
    ///
    /// # Errors
    /// A file that cannot be read or holds no PEM of its kind, naming it; a certificate
    /// without a key or the reverse.
    pub fn load(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<TlsConfig, String> {
        let read =
            |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let ca_pem = ca.map(read).transpose()?;
        if let (Some(pem), Some(path)) = (&ca_pem, ca) {
            if roots(pem).map_or(true, |r| r.is_empty()) {
                return Err(format!("{} holds no PEM certificate", path.display()));
            }
        }
        let client = match (cert, key) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                let (c_pem, k_pem) = (read(c)?, read(k)?);
                if chain(&c_pem).map_or(true, |v| v.is_empty()) {
                    return Err(format!("{} holds no PEM certificate", c.display()));
                }
                if PrivateKeyDer::from_pem_slice(&k_pem).is_err() {
                    return Err(format!("{} holds no PEM private key", k.display()));
                }
                Some((c_pem, k_pem))
            }
            (Some(c), None) => {
                return Err(format!(
                    "client certificate {} without its key",
                    c.display()
                ))
            }
            (None, Some(k)) => {
                return Err(format!(
                    "client key {} without its certificate",
                    k.display()
                ))
            }
        };
        Ok(TlsConfig { ca_pem, client })
    }
}

fn chain(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

fn roots(pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    let mut store = rustls::RootCertStore::empty();
    for c in chain(pem)? {
        store.add(c).map_err(|e| e.to_string())?;
    }
    Ok(store)
}

fn tls_error(what: &'static str, detail: String) -> RedisError {
    RedisError::from((ErrorKind::InvalidClientConfig, what, detail))
}

/// A redis-rs client for `info`: with `tls`'s certificates when the address is `rediss://`.
///
/// # Errors
/// Bad certificates.
pub fn client(info: ConnectionInfo, tls: Option<&TlsConfig>) -> redis::RedisResult<redis::Client> {
    match (info.addr(), tls) {
        (ConnectionAddr::TcpTls { .. }, Some(t)) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: t.client.as_ref().map(|(c, k)| redis::ClientTlsConfig {
                    client_cert: c.clone(),
                    client_key: k.clone(),
                }),
                root_cert: t.ca_pem.clone(),
            },
        ),
        _ => redis::Client::open(info),
    }
}

/// The rustls configuration of this crate's own `rediss://` connections.
pub(crate) fn rustls_config(
    tls: Option<&TlsConfig>,
) -> Result<Arc<rustls::ClientConfig>, RedisError> {
    let roots = match tls.and_then(|t| t.ca_pem.as_deref()) {
        Some(pem) => roots(pem).map_err(|e| tls_error("TLS CA certificate", e))?,
        None => {
            let mut store = rustls::RootCertStore::empty();
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = store.add(c);
            }
            store
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| tls_error("TLS versions", e.to_string()))?
    .with_root_certificates(roots);
    let config = match tls.and_then(|t| t.client.as_ref()) {
        Some((c, k)) => {
            let chain = chain(c).map_err(|e| tls_error("TLS client certificate", e))?;
            let key = PrivateKeyDer::from_pem_slice(k)
                .map_err(|e| tls_error("TLS client key", e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_error("TLS client certificate", e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The name a server's certificate must carry for `host` (a DNS name or an IP address).
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, RedisError> {
    ServerName::try_from(host.to_string()).map_err(|e| tls_error("TLS server name", e.to_string()))
}
