//! Paging of the list API: `page` reaches the first 2,000 records
//! (`DISCRETE_PAGINATION_LIMIT_EXCEEDED` past them), `page_token` continues to
//! 100,000 (`PAGINATION_LIMIT_EXCEEDED`), tokens live 24 hours (`EXPIRED_VALUE`) and
//! are bound to the module, `fields`, `ids`, sort and `If-Modified-Since` they were
//! issued for (`TOKEN_BOUND_DATA_MISMATCH`; a parameter left out on a later page keeps the
//! token's value). A token continues after the last record its page showed (a
//! keyset), so records changed meanwhile move rather than shift whole pages.

use std::collections::HashMap;

use super::schema::Module;
use super::store::{now_ms, Record};

pub const DISCRETE_LIMIT: usize = 2_000;
pub const TOKEN_LIMIT: usize = 100_000;
const TOKEN_TTL_MS: i64 = 24 * 3_600_000;

/// What the list is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    Id,
    CreatedTime,
    ModifiedTime,
}

impl SortBy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "id" => Some(SortBy::Id),
            "Created_Time" => Some(SortBy::CreatedTime),
            "Modified_Time" => Some(SortBy::ModifiedTime),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SortBy::Id => "id",
            SortBy::CreatedTime => "Created_Time",
            SortBy::ModifiedTime => "Modified_Time",
        }
    }

    /// The key a record sorts by; the id breaks ties.
    pub fn key(self, r: &Record) -> (i64, u64) {
        match self {
            SortBy::Id => (0, r.id),
            SortBy::CreatedTime => (r.created, r.id),
            SortBy::ModifiedTime => (r.modified, r.id),
        }
    }
}

/// Where a page token continues.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub module: Module,
    pub fields: String,
    pub sort_by: SortBy,
    pub desc: bool,
    pub since: Option<i64>,
    pub ids: Option<Vec<u64>>,
    /// The key of the last record served.
    pub after: (i64, u64),
    /// Records served before the next page.
    pub served: usize,
    pub expires: i64,
}

/// Issued page tokens.
#[derive(Debug, Default)]
pub struct PageTokens {
    tokens: HashMap<String, Cursor>,
}

impl PageTokens {
    /// A token for `cursor`, valid for 24 hours.
    pub fn issue(&mut self, mut cursor: Cursor) -> (String, i64) {
        let now = now_ms();
        self.tokens.retain(|_, c| c.expires > now);
        cursor.expires = now + TOKEN_TTL_MS;
        let expires = cursor.expires;
        let token = uuid::Uuid::new_v4().simple().to_string();
        self.tokens.insert(token.clone(), cursor);
        (token, expires)
    }

    pub fn get(&self, token: &str) -> Option<&Cursor> {
        self.tokens.get(token)
    }

    pub fn expire_all(&mut self) {
        let past = now_ms() - 1;
        for c in self.tokens.values_mut() {
            c.expires = past;
        }
    }
}

/// Sorted keys of the records, for paging.
pub fn sorted_keys<'a>(
    records: impl Iterator<Item = &'a Record>,
    sort_by: SortBy,
    desc: bool,
) -> Vec<(i64, u64)> {
    let mut keys: Vec<(i64, u64)> = records.map(|r| sort_by.key(r)).collect();
    keys.sort_unstable();
    if desc {
        keys.reverse();
    }
    keys
}

/// Where the keys after `after` start.
pub fn position_after(keys: &[(i64, u64)], after: (i64, u64), desc: bool) -> usize {
    if desc {
        keys.partition_point(|k| *k >= after)
    } else {
        keys.partition_point(|k| *k <= after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyset_continues_after_the_last_key_either_way() {
        let keys = vec![(1, 1), (2, 2), (2, 3), (5, 4)];
        assert_eq!(position_after(&keys, (2, 2), false), 2);
        assert_eq!(position_after(&keys, (2, 9), false), 3);
        let desc: Vec<_> = keys.iter().rev().copied().collect();
        assert_eq!(position_after(&desc, (2, 3), true), 2);
        assert_eq!(position_after(&desc, (0, 0), true), 4);
    }
}
