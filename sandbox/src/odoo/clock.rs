//! Time as Odoo's database sees it: a transaction's `now()` in UTC, stored to the
//! microsecond (`timestamp without time zone`), sent over RPC to the second.

use std::sync::Mutex;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

/// How datetimes are stored: sortable as text, microseconds kept.
const STORED: &str = "%Y-%m-%d %H:%M:%S%.6f";
/// Odoo's `DEFAULT_SERVER_DATETIME_FORMAT`: what RPC clients read and send.
pub(crate) const RPC_LEN: usize = 19;

/// The emulator's clock: real time, or frozen at an instant the tests choose.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    frozen: Mutex<Option<DateTime<Utc>>>,
}

impl Clock {
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.frozen
            .lock()
            .expect("clock lock")
            .unwrap_or_else(Utc::now)
    }

    pub(crate) fn set(&self, at: Option<DateTime<Utc>>) {
        *self.frozen.lock().expect("clock lock") = at;
    }

    /// Moves a frozen clock on (freezing the real one first).
    pub(crate) fn advance(&self, by: chrono::Duration) {
        let mut frozen = self.frozen.lock().expect("clock lock");
        let at = frozen.unwrap_or_else(Utc::now);
        *frozen = Some(at + by);
    }
}

pub(crate) fn stored(at: DateTime<Utc>) -> String {
    at.naive_utc().format(STORED).to_string()
}

pub(crate) fn stored_naive(at: NaiveDateTime) -> String {
    at.format(STORED).to_string()
}

/// A stored datetime as RPC renders it: `YYYY-MM-DD HH:MM:SS`.
pub(crate) fn rpc(stored: &str) -> &str {
    stored.get(..RPC_LEN).unwrap_or(stored)
}

pub(crate) fn date(at: DateTime<Utc>) -> String {
    at.date_naive().format("%Y-%m-%d").to_string()
}

/// Parses what Postgres would accept for a timestamp literal.
pub(crate) fn parse_datetime(s: &str) -> Option<NaiveDateTime> {
    // A zone suffix is ignored, as for a `timestamp without time zone` column.
    let s = s.trim();
    let s = s
        .strip_suffix('Z')
        .or_else(|| s.strip_suffix("+00:00"))
        .unwrap_or(s);
    for f in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(t);
        }
    }
    parse_date(s).and_then(|d| d.and_hms_opt(0, 0, 0))
}

pub(crate) fn parse_date(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok()
}
