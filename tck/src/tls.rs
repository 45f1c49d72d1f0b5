//! A TLS-terminating TCP proxy, for tests of a backend's TLS client (feature `tls`).
//!
//! [`TlsProxy`] listens on 127.0.0.1, completes a TLS handshake with the certificate it was
//! given and forwards the decrypted bytes to a plain-text server. Put it in front of a test
//! server that speaks no TLS (DynamoDB Local, say) to exercise the TLS path of the client
//! end to end; give it an expired certificate, one for another host, or one from another
//! authority to check that the client refuses it with a clear error instead of hanging.
//!
//! [`TlsProxy::start_postgres`] first answers PostgreSQL's `SSLRequest` (the 8-byte message
//! a PostgreSQL client sends before its TLS handshake) with `S`, as a PostgreSQL server with
//! `ssl = on` does, and forwards the session that follows in plain text.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use persistence_tck::tls::TlsProxy;
//! let proxy = TlsProxy::start("127.0.0.1:8000", "certs/server.pem", "certs/server.key").await?;
//! // point the client at https://localhost:{proxy.addr().port()}, trusting the certificate's CA
//! # let _ = proxy.addr();
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// PostgreSQL's `SSLRequest` code (the message is its length, 8, then this code).
const PG_SSL_REQUEST: u32 = 80_877_103;
/// PostgreSQL's `GSSENCRequest` code: answered `N` (no GSS encryption), then the client
/// sends its `SSLRequest` or startup message.
const PG_GSSENC_REQUEST: u32 = 80_877_104;

/// A TLS-terminating proxy in front of one plain-text server; stops when dropped.
pub struct TlsProxy {
    addr: SocketAddr,
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Counts {
    handshakes: AtomicU64,
    failed: AtomicU64,
}

impl TlsProxy {
    /// Listens on a free port of 127.0.0.1, presents the certificate chain in `cert_file`
    /// (PEM) with the private key in `key_file` (PEM, PKCS#8, PKCS#1 or SEC1), and forwards
    /// each connection's plain text to `target` (`host:port`).
    pub async fn start(
        target: impl Into<String>,
        cert_file: impl AsRef<Path>,
        key_file: impl AsRef<Path>,
    ) -> std::io::Result<TlsProxy> {
        Self::spawn(target.into(), cert_file.as_ref(), key_file.as_ref(), false).await
    }

    /// As [`TlsProxy::start`], for PostgreSQL clients: each connection's `SSLRequest` is
    /// answered `S` before the TLS handshake.
    pub async fn start_postgres(
        target: impl Into<String>,
        cert_file: impl AsRef<Path>,
        key_file: impl AsRef<Path>,
    ) -> std::io::Result<TlsProxy> {
        Self::spawn(target.into(), cert_file.as_ref(), key_file.as_ref(), true).await
    }

    async fn spawn(
        target: String,
        cert_file: &Path,
        key_file: &Path,
        postgres: bool,
    ) -> std::io::Result<TlsProxy> {
        let acceptor = acceptor(cert_file, key_file)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (acceptor, target, counts) = (acceptor.clone(), target.clone(), c.clone());
                tokio::spawn(async move {
                    let _ = serve(client, acceptor, &target, postgres, &counts).await;
                });
            }
        });
        Ok(TlsProxy { addr, counts, task })
    }

    /// The address to give the client (connect to it as `localhost` to match a certificate
    /// issued for `localhost`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Handshakes completed so far: a client that refused the certificate adds none.
    pub fn handshakes(&self) -> u64 {
        self.counts.handshakes.load(Ordering::SeqCst)
    }

    /// Handshakes that failed so far (the client refused the certificate, or spoke no TLS).
    pub fn failed_handshakes(&self) -> u64 {
        self.counts.failed.load(Ordering::SeqCst)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, what)
}

fn acceptor(cert_file: &Path, key_file: &Path) -> std::io::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(format!("{}: {e}", cert_file.display())))?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| invalid(format!("{}: {e}", key_file.display())))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| invalid(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| invalid(format!("{}: {e}", cert_file.display())))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn serve(
    mut client: TcpStream,
    acceptor: TlsAcceptor,
    target: &str,
    postgres: bool,
    counts: &Counts,
) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    if postgres {
        loop {
            let mut request = [0u8; 8];
            client.read_exact(&mut request).await?;
            match u32::from_be_bytes([request[4], request[5], request[6], request[7]]) {
                PG_SSL_REQUEST => {
                    client.write_all(b"S").await?;
                    break;
                }
                PG_GSSENC_REQUEST => client.write_all(b"N").await?,
                _ => {
                    counts.failed.fetch_add(1, Ordering::SeqCst);
                    return Ok(()); // a client that does not ask for TLS is not served
                }
            }
        }
    }
    let mut tls = match acceptor.accept(client).await {
        Ok(tls) => tls,
        Err(e) => {
            counts.failed.fetch_add(1, Ordering::SeqCst);
            return Err(e);
        }
    };
    counts.handshakes.fetch_add(1, Ordering::SeqCst);
    let mut server = TcpStream::connect(target).await?;
    let _ = server.set_nodelay(true);
    tokio::io::copy_bidirectional(&mut tls, &mut server).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;

    /// The repository's test certificates (scripts/servers/certs.sh) in a fresh directory.
    fn certs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/servers/certs.sh");
        let status = std::process::Command::new("bash")
            .arg(script)
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{script} failed");
        dir
    }

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn connect(
        proxy: &TlsProxy,
        ca: &Path,
        name: &str,
        postgres: bool,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut tcp = TcpStream::connect(proxy.addr()).await?;
        if postgres {
            let mut request = 8u32.to_be_bytes().to_vec();
            request.extend_from_slice(&PG_SSL_REQUEST.to_be_bytes());
            tcp.write_all(&request).await?;
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer).await?;
            assert_eq!(&answer, b"S");
        }
        let name = ServerName::try_from(name.to_string()).unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    }

    #[tokio::test]
    async fn terminates_tls_and_forwards_plain_text() {
        let dir = certs();
        let d = dir.path();
        let target = echo_server().await;
        for postgres in [false, true] {
            let proxy = if postgres {
                TlsProxy::start_postgres(
                    target.to_string(),
                    d.join("server.pem"),
                    d.join("server.key"),
                )
                .await
            } else {
                TlsProxy::start(
                    target.to_string(),
                    d.join("server.pem"),
                    d.join("server.key"),
                )
                .await
            }
            .unwrap();
            let mut tls = connect(&proxy, &d.join("ca.pem"), "localhost", postgres)
                .await
                .unwrap();
            tls.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
            assert_eq!(proxy.handshakes(), 1);
        }
    }

    #[tokio::test]
    async fn a_client_refuses_an_expired_certificate_a_wrong_name_and_another_ca() {
        let dir = certs();
        let d = dir.path();
        let target = echo_server().await;
        let expired = TlsProxy::start(
            target.to_string(),
            d.join("expired.pem"),
            d.join("expired.key"),
        )
        .await
        .unwrap();
        let e = connect(&expired, &d.join("ca.pem"), "localhost", false)
            .await
            .expect_err("an expired certificate is refused");
        assert!(e.to_string().contains("expired"), "{e}");
        let good = TlsProxy::start(
            target.to_string(),
            d.join("server.pem"),
            d.join("server.key"),
        )
        .await
        .unwrap();
        let e = connect(&good, &d.join("ca.pem"), "127.0.0.1", false)
            .await
            .expect_err("a certificate for another name is refused");
        assert!(e.to_string().contains("not valid for name"), "{e}");
        let e = connect(&good, &d.join("other-ca.pem"), "localhost", false)
            .await
            .expect_err("a certificate of an untrusted authority is refused");
        assert!(e.to_string().contains("UnknownIssuer"), "{e}");
        assert_eq!(good.handshakes(), 0);
    }
}
