//! Poll cursors in the `crm_cursors` bucket: read with their revision, advanced by
//! compare-and-set so that two pollers never move one cursor backwards.

use anyhow::Context as _;
use async_nats::jetstream::kv;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A cursor as read, with the revision a write must match.
#[derive(Debug, Clone)]
pub struct Stored<T> {
    pub value: T,
    revision: Option<u64>,
}

/// Reads the cursor at `key`; a missing or unreadable one is the default (start over).
pub async fn load<T: DeserializeOwned + Default>(
    cursors: &kv::Store,
    key: &str,
) -> anyhow::Result<Stored<T>> {
    let entry = cursors
        .entry(key)
        .await
        .context("reading the poll cursor")?;
    Ok(match entry {
        Some(e) => Stored {
            value: serde_json::from_slice(&e.value).unwrap_or_default(),
            revision: Some(e.revision),
        },
        None => Stored {
            value: T::default(),
            revision: None,
        },
    })
}

/// Writes `next` at `key` if nobody wrote since `read`; false when another poller did
/// (its cursor stands; this poll's events are stored anyway).
pub async fn advance<T: Serialize + Clone>(
    cursors: &kv::Store,
    key: &str,
    read: &Stored<T>,
    next: &T,
) -> anyhow::Result<bool> {
    Ok(write(cursors, key, read, next.clone()).await?.is_some())
}

/// [`advance`], answering the cursor as written (to write again after it), or `None`
/// when another poller wrote since `read`.
pub async fn write<T: Serialize>(
    cursors: &kv::Store,
    key: &str,
    read: &Stored<T>,
    next: T,
) -> anyhow::Result<Option<Stored<T>>> {
    let value = serde_json::to_vec(&next)?.into();
    let written = match read.revision {
        Some(rev) => cursors.update(key, value, rev).await.ok(),
        None => cursors.create(key, value).await.ok(),
    };
    Ok(written.map(|revision| Stored {
        value: next,
        revision: Some(revision),
    }))
}

/// Reads the cursor at `key` and writes what `next` makes of it, when it makes
/// anything (a cursor to move up); another writer winning meanwhile keeps its
/// cursor. Whether it was written.
pub async fn advance_with<T: Serialize + DeserializeOwned + Default>(
    cursors: &kv::Store,
    key: &str,
    next: impl FnOnce(&T) -> Option<T>,
) -> anyhow::Result<bool> {
    let stored = load::<T>(cursors, key).await?;
    match next(&stored.value) {
        Some(next) => Ok(write(cursors, key, &stored, next).await?.is_some()),
        None => Ok(false),
    }
}
