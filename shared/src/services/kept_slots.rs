//! Download slots kept between the downloads of one process.
//!
//! On AWS every slot of the per-host cap is an item that costs a write to
//! take and a write to free. Taken and freed around each download, that is
//! two more write units per image than the rest of the pipeline spends
//! (three), and one host's slot items would take two writes per image on a
//! single partition. So a batch of jobs (one Lambda invocation) takes a
//! host's slot once and keeps it for every download of that host in the
//! batch, one after another, then frees it when the batch ends
//! ([`KeptSlots::free_all`]): two writes per host per batch instead of two
//! per image. Downloads of one host in one batch are serial (the cap counts
//! batches, each downloading one image of the host at a time); compression
//! does not wait for them.
//!
//! The kept slot is leased for [`KEEP_FACTOR`] downloads' worth of time
//! and reused only while a whole download's lease remains, so the store's
//! rule still holds: no slot is used past its lease. An instance that dies
//! holding one frees it when that longer lease ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ports::{HostSlot, HostSlots, PortResult};

/// How many downloads' leases one kept slot is taken for.
pub const KEEP_FACTOR: u32 = 4;

pub struct KeptSlots {
    store: Arc<dyn HostSlots>,
    hosts: Mutex<HashMap<String, Arc<Host>>>,
}

struct Host {
    /// One download of the host at a time in this process.
    turn: Arc<Semaphore>,
    /// The slot kept between downloads and when its lease ends (by this
    /// process's clock, read before asking: never later than the store's).
    kept: tokio::sync::Mutex<Option<(HostSlot, Instant)>>,
    /// The turn of the download in progress, handed back by `release`.
    /// A download cancelled in flight (the batch's deadline) never
    /// releases: its batch is ending, and `free_all` clears it.
    in_use: Mutex<Option<OwnedSemaphorePermit>>,
}

impl KeptSlots {
    pub fn new(store: Arc<dyn HostSlots>) -> Self {
        Self {
            store,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// Frees every slot the batch kept; called once its jobs are settled.
    pub async fn free_all(&self) -> PortResult<()> {
        let hosts: Vec<Arc<Host>> = {
            let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
            hosts.drain().map(|(_, h)| h).collect()
        };
        let mut first_error = None;
        for h in hosts {
            h.in_use.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some((slot, _)) = h.kept.lock().await.take()
                && let Err(e) = self.store.release(&slot).await
            {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn host(&self, host: &str) -> Arc<Host> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts
            .entry(host.to_owned())
            .or_insert_with(|| {
                Arc::new(Host {
                    turn: Arc::new(Semaphore::new(1)),
                    kept: tokio::sync::Mutex::new(None),
                    in_use: Mutex::new(None),
                })
            })
            .clone()
    }
}

#[async_trait]
impl HostSlots for KeptSlots {
    async fn acquire(&self, host: &str, cap: u32, lease: Duration) -> PortResult<Option<HostSlot>> {
        let h = self.host(host);
        // Never closed, so acquiring only waits for the previous download.
        let Ok(turn) = h.turn.clone().acquire_owned().await else {
            return Ok(None);
        };
        let mut kept = h.kept.lock().await;
        let now = Instant::now();
        let slot = match kept.as_ref() {
            Some((slot, until)) if *until >= now + lease => slot.clone(),
            _ => {
                // Too little of its lease is left for another download:
                // free it at once rather than let it lapse.
                if let Some((old, _)) = kept.take() {
                    self.store.release(&old).await?;
                }
                let keep_for = lease * KEEP_FACTOR;
                match self.store.acquire(host, cap, keep_for).await? {
                    Some(slot) => {
                        *kept = Some((slot.clone(), now + keep_for));
                        slot
                    }
                    None => return Ok(None),
                }
            }
        };
        *h.in_use.lock().unwrap_or_else(|p| p.into_inner()) = Some(turn);
        Ok(Some(slot))
    }

    async fn release(&self, slot: &HostSlot) -> PortResult<()> {
        let h = self.host(&slot.host);
        let is_kept = matches!(&*h.kept.lock().await, Some((kept, _)) if kept == slot);
        if !is_kept {
            // Not one the batch keeps (already freed): free it now.
            self.store.release(slot).await?;
        }
        h.in_use.lock().unwrap_or_else(|p| p.into_inner()).take();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::adapters::memory::MemoryHostSlots;

    /// The store's slots, counting the calls that would be writes on
    /// DynamoDB.
    #[derive(Default)]
    struct Counted {
        slots: MemoryHostSlots,
        writes: AtomicUsize,
    }

    #[async_trait]
    impl HostSlots for Counted {
        async fn acquire(
            &self,
            host: &str,
            cap: u32,
            lease: Duration,
        ) -> PortResult<Option<HostSlot>> {
            let slot = self.slots.acquire(host, cap, lease).await?;
            if slot.is_some() {
                self.writes.fetch_add(1, Ordering::SeqCst);
            }
            Ok(slot)
        }

        async fn release(&self, slot: &HostSlot) -> PortResult<()> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.slots.release(slot).await
        }
    }

    const HOST: &str = "https://shop.example";
    const LEASE: Duration = Duration::from_secs(45);

    #[tokio::test]
    async fn a_batch_of_downloads_of_one_host_takes_and_frees_its_slot_once() {
        let store = Arc::new(Counted::default());
        let kept = KeptSlots::new(store.clone());
        for _ in 0..10 {
            let slot = kept.acquire(HOST, 1, LEASE).await.unwrap().unwrap();
            kept.release(&slot).await.unwrap();
        }
        assert_eq!(store.writes.load(Ordering::SeqCst), 1, "taken once");
        // Kept, so another batch finds the host's one slot held…
        let other = KeptSlots::new(store.clone());
        assert_eq!(other.acquire(HOST, 1, LEASE).await.unwrap(), None);
        // …until the batch ends.
        kept.free_all().await.unwrap();
        assert_eq!(store.writes.load(Ordering::SeqCst), 2, "freed once");
        assert!(other.acquire(HOST, 1, LEASE).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn downloads_of_one_host_in_one_process_take_turns() {
        let kept = Arc::new(KeptSlots::new(Arc::new(MemoryHostSlots::new())));
        let first = kept.acquire(HOST, 8, LEASE).await.unwrap().unwrap();
        let meanwhile =
            tokio::time::timeout(Duration::from_millis(200), kept.acquire(HOST, 8, LEASE)).await;
        assert!(meanwhile.is_err(), "a second download waits its turn");
        kept.release(&first).await.unwrap();
        let second = tokio::time::timeout(Duration::from_secs(5), kept.acquire(HOST, 8, LEASE))
            .await
            .expect("the turn passes on release")
            .unwrap()
            .unwrap();
        assert_eq!(second, first, "the same slot, kept");
        // Another host has a turn of its own.
        let other = tokio::time::timeout(
            Duration::from_secs(5),
            kept.acquire("https://cdn.example", 8, LEASE),
        )
        .await
        .expect("another host does not wait")
        .unwrap();
        assert!(other.is_some());
    }

    #[tokio::test]
    async fn a_download_cut_off_in_flight_leaves_nothing_held() {
        let store = Arc::new(MemoryHostSlots::new());
        let kept = KeptSlots::new(store.clone());
        // Acquired and never released: its future was dropped at the deadline.
        kept.acquire(HOST, 1, LEASE).await.unwrap().unwrap();
        kept.free_all().await.unwrap();
        let next = KeptSlots::new(store.clone());
        assert!(
            next.acquire(HOST, 1, LEASE).await.unwrap().is_some(),
            "the next batch finds the host's slot free"
        );
    }

    #[tokio::test]
    async fn a_slot_near_the_end_of_its_lease_is_exchanged_for_a_fresh_one() {
        let store = Arc::new(Counted::default());
        let kept = KeptSlots::new(store.clone());
        let short = Duration::from_millis(40);
        let first = kept.acquire(HOST, 1, short).await.unwrap().unwrap();
        kept.release(&first).await.unwrap();
        // Less than one download's lease is left of KEEP_FACTOR of them.
        tokio::time::sleep(short * (KEEP_FACTOR - 1) + Duration::from_millis(20)).await;
        let second = kept.acquire(HOST, 1, short).await.unwrap().unwrap();
        assert_ne!(second.owner, first.owner, "a fresh lease");
        // Taken, freed, taken again.
        assert_eq!(store.writes.load(Ordering::SeqCst), 3);
    }
}
