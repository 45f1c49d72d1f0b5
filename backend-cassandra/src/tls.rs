//! TLS to the cluster (cargo feature `tls`): the rustls `ClientConfig` the driver connects
//! with, built from [`CassandraConfig`]'s `tls_*` keys, always with the ring provider.
//!
//! The scylla driver hands rustls the IP address of the node it connects to as the server
//! name. [`NameCheck`] wraps rustls's WebPKI verifier to check the name the configuration
//! means instead: `tls_server_name` when set, else the host name of the contact point the
//! node's address was resolved from, else the address itself (against the IP SANs).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use persistence_api::{Error, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::CassandraConfig;

/// The one crypto provider of every `ClientConfig` here. scylla enables rustls's default
/// features (aws-lc-rs) next to the workspace's ring, so rustls has no process default:
/// `ClientConfig::builder()` would panic.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error(key: &str, path: &Path, what: impl std::fmt::Display) -> Error {
    Error::config(format!("cassandra: {key} {}: {what}", path.display()))
}

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(key, path, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| file_error(key, path, e))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The trusted roots: `tls_ca_file`, else the operating system's.
fn roots(config: &CassandraConfig) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match &config.tls_ca_file {
        Some(path) => {
            for cert in read_certs("tls_ca_file", path)? {
                roots
                    .add(cert)
                    .map_err(|e| file_error("tls_ca_file", path, e))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(Error::config(format!(
                    "cassandra: tls is on without tls_ca_file and no operating system root certificate could be loaded ({} errors): set tls_ca_file",
                    native.errors.len()
                )));
            }
        }
    }
    Ok(roots)
}

/// Which name each node's certificate must carry (see the module doc).
#[derive(Debug)]
struct NameCheck {
    inner: Arc<WebPkiServerVerifier>,
    fixed: Option<ServerName<'static>>,
    by_address: HashMap<IpAddr, ServerName<'static>>,
}

impl NameCheck {
    fn name_for<'a>(&'a self, given: &'a ServerName<'_>) -> &'a ServerName<'a> {
        if let Some(fixed) = &self.fixed {
            return fixed;
        }
        match given {
            ServerName::IpAddress(ip) => self.by_address.get(&IpAddr::from(*ip)).unwrap_or(given),
            _ => given,
        }
    }
}

impl ServerCertVerifier for NameCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            self.name_for(server_name),
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The host part of a contact point (`host:port`, `[v6]:port` or a bare host).
pub(crate) fn host_of(contact_point: &str) -> &str {
    if let Some(rest) = contact_point.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match contact_point.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => contact_point,
    }
}

/// Each address the host names among the contact points resolve to, with that name.
async fn names_by_address(config: &CassandraConfig) -> HashMap<IpAddr, ServerName<'static>> {
    let mut map = HashMap::new();
    for point in &config.contact_points {
        let host = host_of(point);
        if host.parse::<IpAddr>().is_ok() {
            continue;
        }
        let Ok(name) = ServerName::try_from(host.to_string()) else {
            continue;
        };
        let target = if host.len() == point.len() {
            format!("{host}:9042")
        } else {
            point.clone()
        };
        // A name that does not resolve fails in the driver, with its own error.
        if let Ok(addrs) = tokio::net::lookup_host(target).await {
            for addr in addrs {
                map.entry(addr.ip()).or_insert_with(|| name.clone());
            }
        }
    }
    map
}

/// The rustls client configuration of `config` (which has `tls = true`).
pub(crate) async fn client_config(config: &CassandraConfig) -> Result<Arc<ClientConfig>> {
    let provider = provider();
    let inner =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots(config)?), provider.clone())
            .build()
            .map_err(|e| Error::config(format!("cassandra: tls_ca_file: {e}")))?;
    let fixed = match &config.tls_server_name {
        Some(name) => Some(ServerName::try_from(name.clone()).map_err(|e| {
            Error::config(format!(
                "cassandra: tls_server_name {name:?} is not a valid DNS name or IP address: {e}"
            ))
        })?),
        None => None,
    };
    let verifier = NameCheck {
        inner,
        fixed,
        by_address: names_by_address(config).await,
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(format!("cassandra: TLS protocol versions: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let tls = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => {
            let chain = read_certs("tls_cert_file", cert)?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| file_error("tls_key_file", key, e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| file_error("tls_key_file", key, e))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(tls))
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_host_part_of_a_contact_point() {
        assert_eq!(host_of("localhost:9042"), "localhost");
        assert_eq!(host_of("10.0.0.1:9042"), "10.0.0.1");
        assert_eq!(host_of("[::1]:9042"), "::1");
        assert_eq!(host_of("db.example.com"), "db.example.com");
        assert_eq!(host_of("::1"), "::1");
    }
}
