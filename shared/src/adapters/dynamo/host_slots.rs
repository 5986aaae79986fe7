//! The per-host download cap across every Lambda invocation: a counting
//! semaphore of leases in the jobs table.
//!
//! | item          | `pk`                 | `sk`          | written                            |
//! |---------------|----------------------|---------------|------------------------------------|
//! | download slot | `HOST#{origin hash}` | `SLOT#{k:04}` | taken and freed once per download  |
//!
//! A slot `k < cap` is taken by a conditional put that succeeds only when
//! the item is absent or its lease (`lease_until`, Unix milliseconds) has
//! ended, and freed by a delete conditional on the holder's `owner` token.
//! The lease is the fetch timeout plus a margin: a download cannot outlive
//! it (the fetch is cut at its timeout), and a holder that dies without
//! freeing its slot frees it when the lease ends. `expires_at` lets
//! DynamoDB's TTL remove slots left behind, and the stream filter of the
//! notify function passes only request items (`sk = A`), so slot writes
//! never invoke it.
//!
//! Why leases rather than a token bucket: the specification caps how many
//! downloads run at once, not how many start per second. A bucket bounds
//! the rate, and concurrency only through an assumed download time; slow
//! downloads (the very case that hurts an origin) would pile up past it.
//! A single counter item (add one, subtract one) would bound concurrency
//! but leak a unit for every holder that dies mid-download, with nothing to
//! take it back; a lease per slot expires on its own.
//!
//! Cost per download: one eventually consistent `Query` of the host's
//! slots (0.5 read units while the cap's items fit in 4 KB), one put and one
//! delete of one-unit items: two write units. A job that finds every slot
//! held pays the read only. Slots spread over one partition per host: at
//! two writes per download that is 500 downloads a second per host before
//! the partition's 1,000 write units a second, far above any cap a host
//! would want.

use std::time::Duration;

use chrono::Utc;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{DynamoStore, get_n, get_s, has_code, key, n, port_error, s};
use crate::ports::{HostSlot, HostSlots, PortResult};

/// How long a slot item outlives its lease before the TTL may remove it
/// (DynamoDB deletes expired items within days, so this only bounds the
/// clutter; the lease decides who holds the slot).
const KEEP_AFTER_LEASE: Duration = Duration::from_secs(3600);

/// Slots tried per acquisition after the read: each lost race costs a write
/// unit, and when several are lost the host is busy in all likelihood.
const PUTS_PER_ACQUIRE: usize = 3;
/// Reads of the host's slots one acquisition makes at most.
const READS_PER_ACQUIRE: usize = 4;

/// The partition of `origin`'s slots: a hash, so that the key stays short
/// whatever the host name and no origin is spelled in the table's keys.
fn host_pk(origin: &str) -> String {
    let digest = Sha256::digest(origin.as_bytes());
    format!("HOST#{}", hex::encode(&digest[..16]))
}

fn slot_sk(index: u32) -> String {
    format!("SLOT#{index:04}")
}

#[async_trait::async_trait]
impl HostSlots for DynamoStore {
    async fn acquire(&self, host: &str, cap: u32, lease: Duration) -> PortResult<Option<HostSlot>> {
        // Every put can lose a race to another worker that read the same
        // picture; a fresh read shows which slots are still free, so a
        // host is reported busy only when a read finds no free slot.
        for _ in 0..READS_PER_ACQUIRE {
            let pk = host_pk(host);
            let now = Utc::now().timestamp_millis();
            // Reading first keeps a busy host to one read, not `cap` failed writes.
            let items = self
                .query(pk.clone(), slot_sk(0), slot_sk(9999), false)
                .await?;
            let mut held = vec![false; cap as usize];
            for item in &items {
                let index = get_s(item, "sk")
                    .and_then(|sk| sk.strip_prefix("SLOT#"))
                    .and_then(|k| k.parse::<usize>().ok());
                let until = get_n::<i64>(item, "lease_until").unwrap_or(0);
                if let Some(flag) = index.and_then(|i| held.get_mut(i)) {
                    *flag = until > now;
                }
            }
            let free: Vec<u32> = (0..cap).filter(|&i| !held[i as usize]).collect();
            if free.is_empty() {
                return Ok(None);
            }
            // Start at a random free slot, so that workers reading the same
            // picture do not all race for the first one.
            let start = (Uuid::new_v4().as_u128() % free.len() as u128) as usize;
            let owner = Uuid::new_v4();
            let until = now.saturating_add(lease.as_millis() as i64);
            let expires_at = (until / 1000).saturating_add(KEEP_AFTER_LEASE.as_secs() as i64);
            for &index in free
                .iter()
                .cycle()
                .skip(start)
                .take(free.len().min(PUTS_PER_ACQUIRE))
            {
                let mut item = key(pk.clone(), slot_sk(index));
                item.insert("owner".into(), s(owner.to_string()));
                item.insert("lease_until".into(), n(until));
                item.insert("origin".into(), s(host));
                item.insert("expires_at".into(), n(expires_at));
                self.noted(&item);
                let result = self
                    .client
                    .put_item()
                    .table_name(self.table())
                    .set_item(Some(item))
                    .condition_expression("attribute_not_exists(pk) OR #until < :now")
                    .expression_attribute_names("#until", "lease_until")
                    .expression_attribute_values(":now", n(now))
                    .send()
                    .await;
                match result {
                    Ok(_) => {
                        return Ok(Some(HostSlot {
                            host: host.to_owned(),
                            index,
                            owner,
                        }));
                    }
                    Err(e) if has_code(&e, "ConditionalCheckFailedException") => continue,
                    Err(e) => return Err(port_error("DynamoDB PutItem (host slot)", e)),
                }
            }
        }
        Ok(None)
    }

    async fn release(&self, slot: &HostSlot) -> PortResult<()> {
        let item = key(host_pk(&slot.host), slot_sk(slot.index));
        self.noted(&item);
        let result = self
            .client
            .delete_item()
            .table_name(self.table())
            .set_key(Some(item))
            .condition_expression("#owner = :owner")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":owner", s(slot.owner.to_string()))
            .send()
            .await;
        match result {
            // Someone else's now (our lease ended): theirs to free.
            Err(e) if has_code(&e, "ConditionalCheckFailedException") => Ok(()),
            Err(e) => Err(port_error("DynamoDB DeleteItem (host slot)", e)),
            Ok(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_has_one_short_partition_and_ordered_slots() {
        let a = host_pk("https://img.example.com");
        assert_eq!(a, host_pk("https://img.example.com"));
        assert_ne!(a, host_pk("http://img.example.com"));
        assert_eq!(a.len(), "HOST#".len() + 32);
        assert!(slot_sk(2) < slot_sk(10));
        assert_eq!(slot_sk(999), "SLOT#0999");
    }
}
