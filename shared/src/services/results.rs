//! Completing a request: its results CSV, then the terminal transition.
//!
//! The CSV of a large request takes longer to build than one image job may
//! run (10,000 products are hundreds of reads), so where a deadline bounds
//! the work it is built in parts of [`PART_PRODUCTS`] products, each stored
//! as `results/{id}.parts/…` as soon as it is built. A run that reaches its
//! deadline pauses; the next run finds the parts already stored and goes on
//! from the first missing one. Parts depend only on finished images, so a
//! part built twice (two runs at once, or a run that died after storing)
//! is the same document.

use std::time::{Duration, Instant};

use bytes::Bytes;
use uuid::Uuid;

use super::App;
use crate::domain::output_csv::OutputCsv;
use crate::domain::{Progress, RequestStatus, results_key, results_part_key};
use crate::metrics::Event;
use crate::ports::PortError;

/// Products in one part of the results CSV: one page of the store.
pub const PART_PRODUCTS: u32 = super::status::MAX_PAGE;

/// A run starts no further part when less than this is left before its
/// deadline: far more than one part takes.
pub const PART_BUDGET: Duration = Duration::from_secs(15);

/// How a completion run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The request is terminal; `won` says whether this run made it so.
    Completed { won: bool },
    /// Stopped at its deadline with parts left to build; run it again.
    Paused,
    /// Not every image is finished, or there is no such request.
    NotDone,
}

/// Writes the results CSV of request `id` and makes the terminal
/// transition (exactly one caller wins it), once `progress` says every
/// image is finished. The CSV is written first so that it exists by the
/// time anyone sees the terminal status. With a `deadline`, the CSV is
/// built in stored parts and the run pauses before the deadline.
#[tracing::instrument(name = "complete", skip_all, fields(request_id = %id))]
pub async fn complete(
    app: &App,
    id: Uuid,
    progress: Progress,
    deadline: Option<Instant>,
) -> Result<Completion, PortError> {
    if !progress.is_done() {
        return Ok(Completion::NotDone);
    }
    let Some(request) = app.store.get_request(id).await? else {
        return Ok(Completion::NotDone);
    };
    if request.terminal.is_some() {
        return Ok(Completion::Completed { won: false });
    }
    let parts = part_count(request.product_count);
    let mut csv = Vec::with_capacity(parts as usize);
    for part in 0..parts {
        let bytes = match deadline {
            None => build_part(app, id, part).await?,
            Some(deadline) => {
                let key = results_part_key(id, part);
                match app.objects.get(&key).await? {
                    Some(stored) => stored,
                    None if Instant::now() + PART_BUDGET >= deadline => {
                        tracing::info!(part, parts, "results CSV paused at its deadline");
                        return Ok(Completion::Paused);
                    }
                    None => {
                        let built = build_part(app, id, part).await?;
                        app.objects.put(&key, built.clone(), CSV).await?;
                        built
                    }
                }
            }
        };
        csv.push(bytes);
    }
    app.objects
        .put(&results_key(id), Bytes::from(csv.concat()), CSV)
        .await?;
    let won = app.store.complete_request(id, progress).await?;
    if won {
        let status = RequestStatus::from_progress(&progress);
        tracing::info!(
            status = status.as_str(),
            total = progress.total,
            succeeded = progress.succeeded,
            failed = progress.failed,
            "request finished"
        );
        app.metrics.record(&Event::RequestCompleted {
            request_id: id,
            status,
            progress,
        });
    }
    Ok(Completion::Completed { won })
}

const CSV: &str = "text/csv; charset=utf-8";

/// Parts of a request of `products` products (one for none: the header).
fn part_count(products: u32) -> u32 {
    products.div_ceil(PART_PRODUCTS).max(1)
}

/// Part `part` of the results CSV: the header first in part 0, then the
/// products at positions `part × PART_PRODUCTS` onwards, in input order.
async fn build_part(app: &App, id: Uuid, part: u32) -> Result<Bytes, PortError> {
    let mut csv = if part == 0 {
        OutputCsv::new()
    } else {
        OutputCsv::continuation()
    };
    let after = (part * PART_PRODUCTS).checked_sub(1);
    let products = app.store.list_products(id, after, PART_PRODUCTS).await?;
    for product in &products {
        csv.push(product, &super::status::output_urls(app, product).await?);
    }
    Ok(Bytes::from(csv.finish()))
}

/// The whole results CSV of request `id` of `products` products, built
/// afresh in one go.
pub async fn build(app: &App, id: Uuid, products: u32) -> Result<Vec<u8>, PortError> {
    let mut csv = Vec::new();
    for part in 0..part_count(products) {
        csv.extend_from_slice(&build_part(app, id, part).await?);
    }
    Ok(csv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_every_product_once() {
        assert_eq!(part_count(0), 1);
        assert_eq!(part_count(1), 1);
        assert_eq!(part_count(PART_PRODUCTS), 1);
        assert_eq!(part_count(PART_PRODUCTS + 1), 2);
        assert_eq!(part_count(10_000), 10);
    }
}
