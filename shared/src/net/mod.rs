//! Outbound HTTP: the network guard and the client built on it.

pub mod client;
pub mod guard;

pub use client::{FetchError, FetchLimits, GuardedClient, PostOutcome};
pub use guard::{NameLookup, NetPolicy, origin_of};
