//! A TCP proxy that makes a real server "go away" mid-request, for fault tests.
//!
//! Point a backend at [`FaultProxy::addr`] instead of the server. The proxy forwards bytes
//! both ways until told to fail: [`FaultProxy::cut`] drops every open connection at once
//! and refuses new ones until [`FaultProxy::restore`]; [`FaultProxy::cut_after`] lets a
//! given number of further client-to-server bytes through and then cuts, so a test can stop
//! the server half-way through one request.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let proxy = persistence_tck::fault::FaultProxy::start("127.0.0.1:5432").await?;
//! // connect the backend to proxy.addr() ...
//! proxy.cut_after(200); // the next request is cut after 200 bytes reach the server
//! // ... the write fails with a retryable error; nothing of it is half-stored
//! proxy.restore();
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A fault-injecting TCP proxy in front of one server; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    target: String,
    /// Bumped on every cut: connections of an older generation close.
    generation: watch::Sender<u64>,
    refusing: AtomicBool,
    /// Client-to-server bytes still allowed before a cut; `u64::MAX` means no limit.
    budget: AtomicU64,
    forwarded: AtomicU64,
}

impl Shared {
    fn cut(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `target` (`host:port`).
    pub async fn start(target: impl Into<String>) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (generation, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            target: target.into(),
            generation,
            refusing: AtomicBool::new(false),
            budget: AtomicU64::new(u64::MAX),
            forwarded: AtomicU64::new(0),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if s.refusing.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let s = s.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&s.target).await {
                        pipe(s, client, server).await;
                    }
                });
            }
        });
        Ok(FaultProxy { addr, shared, task })
    }

    /// The address to give the backend.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection now and refuses new ones.
    pub fn cut(&self) {
        self.shared.cut();
    }

    /// Lets `bytes` more client-to-server bytes through, then cuts.
    pub fn cut_after(&self, bytes: u64) {
        self.shared.budget.store(bytes, Ordering::SeqCst);
    }

    /// Accepts connections again (open connections stay closed; clients reconnect).
    pub fn restore(&self) {
        self.shared.budget.store(u64::MAX, Ordering::SeqCst);
        self.shared.refusing.store(false, Ordering::SeqCst);
    }

    /// Client-to-server bytes forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::SeqCst)
    }
}

/// The `host:port` of a `postgres://user:password@host:port/db?...` URL (port 5432 when it
/// names none), and the URL with `host:port` replaced by `with`: what a test starts a
/// [`FaultProxy`] for, and the URL that sends the client through it.
///
/// ```
/// let (server, via) = persistence_tck::fault::split_postgres_url(
///     "postgres://u:p@db.example:6543/app?sslmode=disable",
///     "127.0.0.1:40000",
/// );
/// assert_eq!(server, "db.example:6543");
/// assert_eq!(via, "postgres://u:p@127.0.0.1:40000/app?sslmode=disable");
/// assert_eq!(persistence_tck::fault::split_postgres_url("postgres://h/db", "x:1").0, "h:5432");
/// ```
///
/// # Panics
/// When `url` has no `scheme://`.
pub fn split_postgres_url(url: &str, with: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let auth_end = rest.rfind('@').map(|i| i + 1).unwrap_or(0);
    let host_end = rest[auth_end..]
        .find(['/', '?'])
        .map(|i| auth_end + i)
        .unwrap_or(rest.len());
    let host = &rest[auth_end..host_end];
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    };
    let rewritten = format!(
        "{scheme}://{}{with}{}",
        &rest[..auth_end],
        &rest[host_end..]
    );
    (host, rewritten)
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.cut();
        self.task.abort();
    }
}

async fn pipe(shared: Arc<Shared>, client: TcpStream, server: TcpStream) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut rx = shared.generation.subscribe();
    rx.borrow_and_update();
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = {
        let shared = shared.clone();
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match cr.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                // Take what the budget allows, atomically (several connections and
                // `restore` may race); cut once it runs out.
                let (mut allowed, mut exhausted) = (n, false);
                let _ = shared
                    .budget
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |budget| {
                        if budget == u64::MAX {
                            (allowed, exhausted) = (n, false);
                            None
                        } else {
                            allowed = (budget as usize).min(n);
                            exhausted = budget == allowed as u64;
                            Some(budget - allowed as u64)
                        }
                    });
                if allowed > 0 && sw.write_all(&buf[..allowed]).await.is_err() {
                    return;
                }
                shared.forwarded.fetch_add(allowed as u64, Ordering::SeqCst);
                if exhausted {
                    shared.cut();
                    return;
                }
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = rx.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn urls_are_rewritten_to_the_proxy() {
        assert_eq!(
            split_postgres_url("postgres://u:p@127.0.0.1:48135/db", "127.0.0.1:9"),
            (
                "127.0.0.1:48135".to_owned(),
                "postgres://u:p@127.0.0.1:9/db".to_owned()
            )
        );
        assert_eq!(
            split_postgres_url("postgresql://h/db?sslmode=disable", "p:1"),
            (
                "h:5432".to_owned(),
                "postgresql://p:1/db?sslmode=disable".to_owned()
            )
        );
    }

    #[tokio::test]
    async fn forwards_then_cuts_after_the_budget_and_restores() {
        let proxy = FaultProxy::start(echo_server().await.to_string())
            .await
            .unwrap();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");

        proxy.cut_after(3);
        c.write_all(b"abcdef").await.unwrap();
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got).await;
        assert!(
            got.is_empty(),
            "the server went away before answering: {got:?}"
        );
        assert_eq!(
            proxy.forwarded(),
            8,
            "5 bytes, then exactly the budget of 3"
        );

        // Refused while cut; accepted again after restore.
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut one = [0u8; 1];
        assert_eq!(refused.read(&mut one).await.unwrap_or(0), 0);
        proxy.restore();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        c.write_all(b"x").await.unwrap();
        c.read_exact(&mut one).await.unwrap();
        assert_eq!(&one, b"x");
    }
}
