//! Version-1 (time-based) UUIDs as Cassandra orders them.
//!
//! Every event gets a fresh one, strictly increasing within the process (a clock in 100 ns
//! units that never repeats), with a random clock sequence and node per process, so two
//! events never share a `timestamp` and an offset resumes exactly after one event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use scylla::value::CqlTimeuuid;
use uuid::Uuid;

/// 100 ns intervals between 1582-10-15 (the UUID epoch) and 1970-01-01.
const GREGORIAN_OFFSET: u64 = 0x01B2_1DD2_1381_4000;
/// The clock-sequence-and-node half Cassandra's `minTimeuuid` uses: the smallest in its order.
const MIN_LSB: u64 = 0x8080_8080_8080_8080;
/// The half Cassandra's `maxTimeuuid` uses: the largest in its order.
const MAX_LSB: u64 = 0x7f7f_7f7f_7f7f_7f7f;

static LAST: AtomicU64 = AtomicU64::new(0);
static NODE: OnceLock<u64> = OnceLock::new();

fn node_lsb() -> u64 {
    *NODE.get_or_init(|| {
        let random = u64::from_be_bytes(Uuid::new_v4().as_bytes()[8..16].try_into().unwrap());
        // RFC 4122 variant (10xx) in the top bits; multicast bit set (random node).
        (random & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000 | 0x0000_0100_0000_0000
    })
}

fn from_ticks(ticks: u64, lsb: u64) -> CqlTimeuuid {
    let time_low = ticks & 0xffff_ffff;
    let time_mid = (ticks >> 32) & 0xffff;
    let time_hi = ((ticks >> 48) & 0x0fff) | 0x1000;
    let msb = (time_low << 32) | (time_mid << 16) | time_hi;
    CqlTimeuuid::from_u64_pair(msb, lsb)
}

fn ticks_of_millis(millis: i64) -> u64 {
    (millis.max(0) as u64) * 10_000 + GREGORIAN_OFFSET
}

/// A fresh time-based UUID, greater than every one this process made before.
pub(crate) fn now() -> CqlTimeuuid {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let wall = d.as_secs() * 10_000_000 + u64::from(d.subsec_nanos()) / 100 + GREGORIAN_OFFSET;
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = wall.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::SeqCst, Ordering::Relaxed) {
            Ok(_) => return from_ticks(next, node_lsb()),
            Err(actual) => last = actual,
        }
    }
}

/// Moves this process's clock past `u`: every UUID made from now on is greater.
pub(crate) fn advance_past(u: CqlTimeuuid) {
    let b = u.as_ref().as_bytes();
    let ticks = u64::from_be_bytes([b[6] & 0x0f, b[7], b[4], b[5], b[0], b[1], b[2], b[3]]);
    LAST.fetch_max(ticks, Ordering::SeqCst);
}

/// The smallest time-based UUID of the millisecond `millis`, in Cassandra's order.
pub(crate) fn min_of_millis(millis: i64) -> CqlTimeuuid {
    from_ticks(ticks_of_millis(millis), MIN_LSB)
}

/// The largest time-based UUID of the millisecond `millis`, in Cassandra's order.
pub(crate) fn max_of_millis(millis: i64) -> CqlTimeuuid {
    from_ticks(ticks_of_millis(millis) + 9_999, MAX_LSB)
}

/// Milliseconds since the Unix epoch of a time-based UUID.
pub(crate) fn millis_of(u: &Uuid) -> i64 {
    let b = u.as_bytes();
    let ticks = u64::from_be_bytes([b[6] & 0x0f, b[7], b[4], b[5], b[0], b[1], b[2], b[3]]);
    (ticks.saturating_sub(GREGORIAN_OFFSET) / 10_000) as i64
}

/// The current time in epoch milliseconds.
pub(crate) fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_bounds() {
        let a = now();
        let b = now();
        assert!(a < b);
        let ms = millis_of(a.as_ref());
        assert!((now_millis() - ms).abs() < 1000);
        assert!(min_of_millis(ms) < a);
        assert!(max_of_millis(ms + 1) > a);
        assert!(max_of_millis(ms) < min_of_millis(ms + 1));
        assert_eq!(millis_of(min_of_millis(ms).as_ref()), ms);
        assert_eq!(millis_of(max_of_millis(ms).as_ref()), ms);
        assert_eq!(a.as_ref().get_version_num(), 1);
        let ahead = min_of_millis(now_millis() + 5_000);
        advance_past(ahead);
        assert!(now() > ahead);
    }
}
