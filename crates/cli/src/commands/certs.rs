//! Certificates for `dualbus redis up --tls` (made with rcgen): a certificate authority of its
//! own, a server certificate for this machine (`127.0.0.1`, `::1`, `localhost`) and a client
//! certificate the dualbus commands present (the servers require one: `tls-auth-clients yes`).
//! They are written to `DIR/tls/`, private keys with mode 0600, and kept across runs.

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

/// The directory of the certificates in `redis up --dir`.
pub const TLS_DIR: &str = "tls";

/// The files of `DIR/tls/`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA's certificate: what clients and servers trust.
    pub ca: PathBuf,
    /// The servers' certificate and key.
    pub server_cert: PathBuf,
    /// The servers' private key.
    pub server_key: PathBuf,
    /// The clients' certificate.
    pub client_cert: PathBuf,
    /// The clients' private key.
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// The files' places in `dir/tls/`.
    pub fn in_dir(dir: &Path) -> TlsFiles {
        let t = dir.join(TLS_DIR);
        TlsFiles {
            ca: t.join("ca.crt"),
            server_cert: t.join("server.crt"),
            server_key: t.join("server.key"),
            client_cert: t.join("client.crt"),
            client_key: t.join("client.key"),
        }
    }

    fn all(&self) -> [&PathBuf; 5] {
        [
            &self.ca,
            &self.server_cert,
            &self.server_key,
            &self.client_cert,
            &self.client_key,
        ]
    }

    /// Whether every file is there.
    pub fn exist(&self) -> bool {
        self.all().iter().all(|p| p.is_file())
    }
}

/// Makes the CA, the server and the client certificates in `dir/tls/` unless they are all
/// there already (the servers and the clients then keep trusting each other across runs).
///
/// # Errors
/// A certificate that cannot be made or a file that cannot be written, naming it.
pub fn write(dir: &Path) -> anyhow::Result<TlsFiles> {
    let files = TlsFiles::in_dir(dir);
    if files.exist() {
        return Ok(files);
    }
    let tls = dir.join(TLS_DIR);
    std::fs::create_dir_all(&tls).with_context(|| format!("cannot create {}", tls.display()))?;
    let ca_key = KeyPair::generate().context("a key for the CA")?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "dualbus redis up CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).context("the CA certificate")?;
    let issuer = Issuer::new(ca, &ca_key);

    let server_key = KeyPair::generate().context("a key for the servers")?;
    let mut server = CertificateParams::new(vec!["localhost".to_string()])?;
    server
        .distinguished_name
        .push(DnType::CommonName, "dualbus redis");
    for ip in ["127.0.0.1", "::1"] {
        server
            .subject_alt_names
            .push(SanType::IpAddress(ip.parse().expect("an IP address")));
    }
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server
        .signed_by(&server_key, &issuer)
        .context("the server certificate")?;

    let client_key = KeyPair::generate().context("a key for the clients")?;
    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client
        .distinguished_name
        .push(DnType::CommonName, "dualbus");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client
        .signed_by(&client_key, &issuer)
        .context("the client certificate")?;

    let public = |path: &Path, text: String| {
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    public(&files.ca, ca_cert.pem())?;
    public(&files.server_cert, server_cert.pem())?;
    public(&files.client_cert, client_cert.pem())?;
    super::acl::write_private(&files.server_key, &server_key.serialize_pem())?;
    super::acl::write_private(&files.client_key, &client_key.serialize_pem())?;
    Ok(files)
}
