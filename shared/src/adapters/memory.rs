//! The per-host download cap of the local runner: the worker pool is one
//! process, so the slots live in its memory. Each slot is a lease with an
//! owner, as on DynamoDB, so both adapters pass the same conformance
//! cases and a task that never releases (a panic) frees its slot when the
//! lease ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use uuid::Uuid;

use crate::ports::{HostSlot, HostSlots, PortResult};

/// Holder and lease end of each slot of one host (`None`: free).
type Slots = Vec<Option<(Uuid, Instant)>>;

#[derive(Clone, Debug, Default)]
pub struct MemoryHostSlots {
    /// Only hosts with a slot held (or lapsed but not yet taken): a host
    /// is dropped when its last slot is released, so memory follows the
    /// downloads in flight, not every host ever seen.
    hosts: Arc<Mutex<HashMap<String, Slots>>>,
}

impl MemoryHostSlots {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl HostSlots for MemoryHostSlots {
    async fn acquire(&self, host: &str, cap: u32, lease: Duration) -> PortResult<Option<HostSlot>> {
        let now = Instant::now();
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let slots = hosts.entry(host.to_owned()).or_default();
        if slots.len() < cap as usize {
            slots.resize(cap as usize, None);
        }
        let free = slots
            .iter()
            .take(cap as usize)
            .position(|s| s.is_none_or(|(_, until)| until <= now));
        let Some(index) = free else {
            return Ok(None);
        };
        let owner = Uuid::new_v4();
        slots[index] = Some((owner, now + lease));
        Ok(Some(HostSlot {
            host: host.to_owned(),
            index: index as u32,
            owner,
        }))
    }

    async fn release(&self, slot: &HostSlot) -> PortResult<()> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let Some(slots) = hosts.get_mut(&slot.host) else {
            return Ok(());
        };
        if let Some(held) = slots.get_mut(slot.index as usize)
            && held.is_some_and(|(owner, _)| owner == slot.owner)
        {
            *held = None;
        }
        if slots.iter().all(Option::is_none) {
            hosts.remove(&slot.host);
        }
        Ok(())
    }
}
