//! No password, wrong or right, in any tracing event or span field while opening over TLS:
//! a subscriber on the test's thread captures everything at TRACE level. One test in its
//! own binary, since tracing caches each callsite's interest when it is first hit, and a
//! test on another thread without a subscriber could hit the backend's callsites first.
//!
//! `bash scripts/servers/postgres.sh start && source .servers/postgres/env &&
//! cargo test -p persistence-sql --test tls_tracing`

#[path = "support/tls_env.rs"]
mod tls_env;
use tls_env::{env, password_file, verify_full, write_and_read};

/// Every tracing event and span field emitted on the test's thread, as text.
#[derive(Clone, Default)]
struct Capture {
    text: std::sync::Arc<std::sync::Mutex<String>>,
    next_id: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut text = self.text.lock().unwrap();
        text.push_str("\nspan ");
        text.push_str(span.metadata().name());
        span.record(&mut Fields(&mut text));
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::span::Id::from_u64(id + 1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        values.record(&mut Fields(&mut self.text.lock().unwrap()));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut text = self.text.lock().unwrap();
        text.push_str("\nevent ");
        text.push_str(event.metadata().target());
        event.record(&mut Fields(&mut text));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Neither a wrong nor the right password appears in any tracing event or span of a refused
/// and an accepted open (the runtime of `#[tokio::test]` runs on this thread only, so the
/// thread's subscriber sees everything the pool does; alone in its binary, so no other
/// test's thread registers the callsites first and leaves them uninterested).
#[tokio::test]
async fn no_password_in_tracing() {
    let Some(env) = env() else { return };
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let wrong = "wrong-Secret-0815";
    let mut config = verify_full(&env.tls_url, &env);
    config.password = Some(wrong.into());
    assert!(persistence_sql::open(config).await.is_err());
    let file = password_file(&env.password);
    let mut config = verify_full(&env.tls_url, &env).with_schema("tls_tracing");
    config.password_file = Some(file.path().to_path_buf());
    let stores = persistence_sql::open(config).await.expect("open over TLS");
    write_and_read(&stores, &format!("trace-{}", std::process::id())).await;
    let text = capture.text.lock().unwrap().clone();
    assert!(
        text.contains("password authentication failed"),
        "the capture saw the refusal: {text}"
    );
    assert!(
        !text.contains(wrong),
        "the wrong password is in tracing: {text}"
    );
    assert!(
        !text.contains(&env.password),
        "the password is in tracing: {text}"
    );
}
