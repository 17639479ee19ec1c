//! Leases in the `crm_cursors` bucket, so that work meant to run once across replicas
//! does: a lease is a key taken by compare-and-set, held until a time, renewed by its
//! holder and free again once that time has passed (a holder killed with SIGKILL
//! gives it up by expiry).
//!
//! [`lead`] runs a task only while this process holds the task's lease — the pollers
//! and the Zoho channel keeper, of which several workers would otherwise each run a
//! copy, multiplying the calls made to the CRMs.

use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// How long a leader's lease lasts without renewal: how long a killed leader's work
/// waits for another replica to take it over.
pub const LEADER_TTL: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    holder: String,
    until_ms: i64,
}

/// Takes (or renews) the lease `key` for `ttl`; false when another holds it.
pub async fn take(
    bucket: &kv::Store,
    key: &str,
    holder: &str,
    ttl: Duration,
) -> anyhow::Result<bool> {
    let now = Utc::now().timestamp_millis();
    let lease = Lease {
        holder: holder.to_owned(),
        until_ms: now + ttl.as_millis() as i64,
    };
    let value: bytes::Bytes = serde_json::to_vec(&lease)?.into();
    Ok(match bucket.entry(key).await? {
        None => bucket.create(key, value).await.is_ok(),
        Some(entry) => {
            let current: Option<Lease> = serde_json::from_slice(&entry.value).ok();
            let free = current.is_none_or(|l| l.holder == holder || l.until_ms < now);
            free && bucket.update(key, value, entry.revision).await.is_ok()
        }
    })
}

/// Gives the lease `key` back, if `holder` still holds it.
pub async fn release(bucket: &kv::Store, key: &str, holder: &str) {
    if let Ok(Some(entry)) = bucket.entry(key).await {
        let mine = serde_json::from_slice::<Lease>(&entry.value).is_ok_and(|l| l.holder == holder);
        if mine {
            let gone = Lease {
                holder: String::new(),
                until_ms: 0,
            };
            let value = serde_json::to_vec(&gone).unwrap_or_default().into();
            let _ = bucket.update(key, value, entry.revision).await;
        }
    }
}

/// Runs `task` whenever this process holds the lease `lease.leader.<name>`, until
/// `stop` is cancelled.
///
/// The lease is renewed every third of `ttl`. A renewal refused (another process took
/// the lease after this one stalled past `ttl`) or impossible for a whole `ttl` (NATS
/// unreachable) cancels the task's token; once the task has returned, this process
/// waits to lead again. On stop the task is let finish and the lease given back, so a
/// replica that stops on SIGTERM hands over at once; one that is killed hands over
/// after `ttl`.
///
/// A task that fails while leading fails `lead` too, as it would have failed the
/// process without a lease.
pub async fn lead<F, Fut>(
    bucket: kv::Store,
    name: &str,
    ttl: Duration,
    stop: CancellationToken,
    task: F,
) -> anyhow::Result<()>
where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let key = format!("lease.leader.{name}");
    let holder = uuid::Uuid::new_v4().simple().to_string();
    let every = ttl / 3;
    loop {
        let taken = take(&bucket, &key, &holder, ttl).await.unwrap_or_else(|e| {
            tracing::warn!(task = name, error = %e, "cannot take the lease");
            false
        });
        if !taken {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(every) => continue,
            }
        }
        let mut renewed = Instant::now();
        tracing::info!(task = name, "this process leads");
        let leading = stop.child_token();
        let run = task(leading.clone());
        tokio::pin!(run);
        loop {
            tokio::select! {
                result = &mut run => {
                    release(&bucket, &key, &holder).await;
                    if stop.is_cancelled() {
                        return result;
                    }
                    if leading.is_cancelled() {
                        tracing::info!(task = name, "leadership lost; waiting to lead again");
                        break;
                    }
                    return result.and(Err(anyhow::anyhow!("{name} stopped unexpectedly")));
                }
                () = tokio::time::sleep(every), if !leading.is_cancelled() => {
                    // Stamped before asking: the lease runs from the request, not the answer.
                    let asked = Instant::now();
                    match take(&bucket, &key, &holder, ttl).await {
                        Ok(true) => renewed = asked,
                        Ok(false) => leading.cancel(),
                        Err(e) => {
                            tracing::warn!(task = name, error = %e, "cannot renew the lease");
                            // Step down before the lease can lapse, not after.
                            if renewed.elapsed() >= ttl - every {
                                leading.cancel();
                            }
                        }
                    }
                }
            }
        }
    }
}
