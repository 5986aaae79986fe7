//! One conformance suite for the ports, run with the same assertions
//! against the embedded adapters (SQLite, the filesystem) and, with the
//! `aws` feature and `MOTO_ENDPOINT` set, the AWS adapters on a moto server.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use futures_util::future::join_all;
use imgproc::domain::csv_input::ParsedProduct;
use imgproc::domain::{
    Compressed, ErrorCode, HostWait, ImageError, ImageJob, ImageKey, ImageOutcome, ImageStatus,
    NewRequest, Progress, RequestStatus, WebhookState, WebhookStatus,
};
use imgproc::ports::{
    CreateOutcome, Download, FanOutClaim, HostSlots, JobQueue, JobSource, JobStore, ObjectStore,
    WebhookClaim,
};
use uuid::Uuid;

/// The prefix of the URLs every object store under test hands out.
const FILES_BASE: &str = "http://127.0.0.1:3000/files/";

/// The adapters under test, plus whatever keeps them alive (a temp dir).
pub struct Backends {
    pub store: Arc<dyn JobStore>,
    pub queue: Arc<dyn JobQueue>,
    pub source: Arc<dyn JobSource>,
    pub objects: Arc<dyn ObjectStore>,
    pub hosts: Arc<dyn HostSlots>,
    pub _keep: Box<dyn std::any::Any + Send + Sync>,
}

fn new_request(images_per_product: &[usize], fingerprint: &str) -> NewRequest {
    NewRequest {
        id: Uuid::new_v4(),
        created_at: Utc::now(),
        fingerprint: fingerprint.into(),
        client_id: Some("acme".into()),
        webhook_url: Some("https://hooks.example.com/imgproc".into()),
        warnings: vec!["unknown column \"Notes\" ignored".into()],
        products: images_per_product
            .iter()
            .enumerate()
            .map(|(p, &n)| ParsedProduct {
                line: p as u64 + 2,
                serial_number: p as u64 * 10 + 1,
                product_name: format!("SKU-{p}"),
                urls: (1..=n)
                    .map(|i| format!("https://img.example.com/{fingerprint}/{p}/{i}.jpg"))
                    .collect(),
            })
            .collect(),
    }
}

fn succeeded(key: ImageKey) -> ImageOutcome {
    ImageOutcome::Succeeded(Compressed {
        output_key: format!(
            "processed/{}/{}/{}.jpg",
            key.request_id, key.product, key.image
        ),
        input_bytes: 1000,
        output_bytes: 400,
        width: 64,
        height: 48,
        original_kept: false,
    })
}

fn failed() -> ImageOutcome {
    ImageOutcome::Failed {
        error: ImageError::new(ErrorCode::HttpStatus, "the server answered 404"),
        input_bytes: None,
    }
}

/// The key of image `image` (1-based) of product `product` of `new`; an
/// image that does not exist gets an ordinal past the request's end.
fn key(new: &NewRequest, product: u32, image: u32) -> ImageKey {
    let total = new.image_count();
    let before: u32 = new
        .products
        .iter()
        .take(product as usize)
        .map(|p| p.urls.len() as u32)
        .sum();
    let exists = new
        .products
        .get(product as usize)
        .is_some_and(|p| image >= 1 && image as usize <= p.urls.len());
    ImageKey {
        request_id: new.id,
        product,
        image,
        ordinal: if exists {
            before + image - 1
        } else {
            total + image
        },
        total,
    }
}

pub async fn create_is_all_or_nothing_and_idempotent(b: &Backends) {
    let new = new_request(&[2, 1, 3], "first");
    assert_eq!(
        b.store.create_request(&new).await.unwrap(),
        CreateOutcome::Created
    );
    let stored = b.store.get_request(new.id).await.unwrap().expect("stored");
    assert_eq!(
        stored.progress,
        Progress {
            total: 6,
            succeeded: 0,
            failed: 0
        }
    );
    assert_eq!(stored.product_count, 3);
    assert_eq!(stored.fingerprint, "first");
    assert_eq!(stored.client_id.as_deref(), Some("acme"));
    assert_eq!(stored.warnings, new.warnings);
    assert_eq!(
        stored.webhook,
        Some(WebhookState {
            url: "https://hooks.example.com/imgproc".into(),
            status: WebhookStatus::Pending,
            attempts: 0
        })
    );
    assert_eq!(stored.status(), RequestStatus::Pending);

    // The same ID again: nothing changes and the first request comes back.
    match b.store.create_request(&new).await.unwrap() {
        CreateOutcome::Existing(r) => assert_eq!(r, stored),
        other => panic!("expected Existing, got {other:?}"),
    }
    // The same ID with other content: the first request is left intact.
    let mut other = new_request(&[5, 5], "second");
    other.id = new.id;
    match b.store.create_request(&other).await.unwrap() {
        CreateOutcome::Existing(r) => assert_eq!(r.fingerprint, "first"),
        o => panic!("expected Existing, got {o:?}"),
    }
    let products = b.store.list_products(new.id, None, 100).await.unwrap();
    assert_eq!(
        products.iter().map(|p| p.images.len()).collect::<Vec<_>>(),
        vec![2, 1, 3]
    );
    assert!(products[0].images[0].input_url.contains("/first/"));
    assert_eq!(b.store.get_request(Uuid::new_v4()).await.unwrap(), None);
    // A request without a client reads back without one.
    let mut anonymous = new_request(&[1], "anonymous");
    anonymous.client_id = None;
    b.store.create_request(&anonymous).await.unwrap();
    let stored = b
        .store
        .get_request(anonymous.id)
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(stored.client_id, None);
}

pub async fn products_page_in_input_order(b: &Backends) {
    let new = new_request(&[1, 3, 2, 1, 12], "paging");
    b.store.create_request(&new).await.unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = b.store.list_products(new.id, after, 2).await.unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.position);
        seen.extend(page);
    }
    assert_eq!(
        seen.iter().map(|p| p.position).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    for (p, product) in seen.iter().enumerate() {
        let source = &new.products[p];
        assert_eq!(product.serial_number, source.serial_number);
        assert_eq!(product.product_name, source.product_name);
        assert_eq!(
            product
                .images
                .iter()
                .map(|i| i.input_url.clone())
                .collect::<Vec<_>>(),
            source.urls
        );
        assert_eq!(
            product.images.iter().map(|i| i.index).collect::<Vec<_>>(),
            (1..=source.urls.len() as u32).collect::<Vec<_>>()
        );
        assert!(
            product
                .images
                .iter()
                .all(|i| i.status == ImageStatus::Pending && i.output_key.is_none())
        );
    }
    assert!(
        b.store
            .list_products(new.id, Some(4), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        b.store
            .list_products(Uuid::new_v4(), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn an_image_finishes_once_under_concurrent_duplicates(b: &Backends) {
    let new = new_request(&[2, 2], "finish");
    b.store.create_request(&new).await.unwrap();
    let id = new.id;

    let k = key(&new, 0, 1);
    let outcome = succeeded(k);
    let results = join_all((0..8).map(|_| b.store.finish_image(k, &outcome))).await;
    let applied = results
        .iter()
        .filter(|r| r.as_ref().unwrap().applied)
        .count();
    assert_eq!(applied, 1, "exactly one duplicate counts");
    assert_eq!(
        b.store.get_request(id).await.unwrap().unwrap().progress,
        Progress {
            total: 4,
            succeeded: 1,
            failed: 0
        }
    );
    assert_eq!(
        b.store.image_status(k).await.unwrap(),
        Some(ImageStatus::Succeeded)
    );

    let k2 = key(&new, 1, 2);
    let failure = failed();
    let results = join_all((0..8).map(|_| b.store.finish_image(k2, &failure))).await;
    assert_eq!(
        results
            .iter()
            .filter(|r| r.as_ref().unwrap().applied)
            .count(),
        1
    );
    // A later, different outcome for a finished image changes nothing.
    let again = b.store.finish_image(k2, &succeeded(k2)).await.unwrap();
    assert!(!again.applied);
    assert_eq!(again.all_done, None);
    assert_eq!(
        b.store.get_request(id).await.unwrap().unwrap().progress,
        Progress {
            total: 4,
            succeeded: 1,
            failed: 1
        }
    );

    let products = b.store.list_products(id, None, 10).await.unwrap();
    let done = &products[0].images[0];
    assert_eq!(
        (done.status, done.output_key.as_deref()),
        (
            ImageStatus::Succeeded,
            Some(format!("processed/{id}/0/1.jpg").as_str())
        )
    );
    assert_eq!(
        (
            done.input_bytes,
            done.output_bytes,
            done.width,
            done.height,
            done.original_kept
        ),
        (Some(1000), Some(400), Some(64), Some(48), false)
    );
    let bad = &products[1].images[1];
    assert_eq!(bad.status, ImageStatus::Failed);
    assert_eq!(
        bad.error.as_ref().map(|e| e.code),
        Some(ErrorCode::HttpStatus)
    );
    assert_eq!(
        bad.error.as_ref().map(|e| e.message.as_str()),
        Some("the server answered 404")
    );
    assert_eq!(products[0].images[1].status, ImageStatus::Pending);

    assert!(
        b.store
            .finish_image(key(&new, 5, 1), &failed())
            .await
            .is_err(),
        "no such image"
    );
    assert_eq!(b.store.image_status(key(&new, 5, 1)).await.unwrap(), None);
}

pub async fn a_request_completes_exactly_once(b: &Backends) {
    let new = new_request(&[1, 2], "complete");
    b.store.create_request(&new).await.unwrap();
    let id = new.id;
    for (k, outcome) in [
        (key(&new, 0, 1), succeeded(key(&new, 0, 1))),
        (key(&new, 1, 1), failed()),
    ] {
        let finished = b.store.finish_image(k, &outcome).await.unwrap();
        assert_eq!(finished.all_done, None, "not every image has finished");
    }
    let partial = b.store.get_request(id).await.unwrap().unwrap().progress;
    assert!(
        !b.store.complete_request(id, partial).await.unwrap(),
        "not every image has finished"
    );
    let progress = b
        .store
        .finish_image(key(&new, 1, 2), &succeeded(key(&new, 1, 2)))
        .await
        .unwrap()
        .all_done
        .expect("the last image finishes the request");
    assert_eq!(
        progress,
        Progress {
            total: 3,
            succeeded: 2,
            failed: 1
        }
    );
    assert!(
        !b.store
            .complete_request(
                id,
                Progress {
                    succeeded: 3,
                    failed: 0,
                    ..progress
                }
            )
            .await
            .unwrap(),
        "stale counters"
    );

    let wins = join_all((0..8).map(|_| b.store.complete_request(id, progress))).await;
    assert_eq!(
        wins.iter().filter(|w| *w.as_ref().unwrap()).count(),
        1,
        "exactly one terminal transition"
    );
    assert!(!b.store.complete_request(id, progress).await.unwrap());
    let r = b.store.get_request(id).await.unwrap().unwrap();
    assert_eq!(r.terminal, Some(RequestStatus::CompletedWithErrors));
    assert_eq!(r.status(), RequestStatus::CompletedWithErrors);
    assert!(r.completed_at.is_some());

    let state = WebhookState {
        url: "https://hooks.example.com/imgproc".into(),
        status: WebhookStatus::Delivered,
        attempts: 2,
    };
    b.store.record_webhook(id, &state).await.unwrap();
    assert_eq!(
        b.store.get_request(id).await.unwrap().unwrap().webhook,
        Some(state.clone())
    );
    // Recording on a request that does not exist changes nothing.
    b.store
        .record_webhook(Uuid::new_v4(), &state)
        .await
        .unwrap();
}

/// A request of one image, finished and terminal.
async fn terminal_request(b: &Backends, webhook: bool) -> Uuid {
    let mut new = new_request(&[1], "webhook-claim");
    if !webhook {
        new.webhook_url = None;
    }
    b.store.create_request(&new).await.unwrap();
    let progress = b
        .store
        .finish_image(key(&new, 0, 1), &succeeded(key(&new, 0, 1)))
        .await
        .unwrap()
        .all_done
        .expect("its only image finishes the request");
    assert!(b.store.complete_request(new.id, progress).await.unwrap());
    new.id
}

pub async fn a_webhook_attempt_is_claimed_once(b: &Backends) {
    let lease = Duration::from_secs(60);
    let claim = |id: Uuid, attempt: u32, lease: Duration| {
        let store = b.store.clone();
        async move {
            store
                .claim_webhook_attempt(id, attempt, lease)
                .await
                .unwrap()
        }
    };
    let record = |id: Uuid, status: WebhookStatus, attempts: u32| {
        let store = b.store.clone();
        async move {
            let state = WebhookState {
                url: "https://hooks.example.com/imgproc".into(),
                status,
                attempts,
            };
            store.record_webhook(id, &state).await.unwrap()
        }
    };

    // A request that is not terminal yet owes no webhook.
    let new = new_request(&[1], "webhook-claim-early");
    b.store.create_request(&new).await.unwrap();
    assert_eq!(claim(new.id, 1, lease).await, WebhookClaim::Done);

    let id = terminal_request(b, true).await;
    assert_eq!(
        claim(id, 2, lease).await,
        WebhookClaim::NotYet,
        "attempt 1 is not recorded yet"
    );
    let claims = join_all((0..8).map(|_| claim(id, 1, lease))).await;
    assert_eq!(
        claims
            .iter()
            .filter(|c| **c == WebhookClaim::Claimed)
            .count(),
        1,
        "one of eight duplicates holds attempt 1: {claims:?}"
    );
    assert!(
        claims
            .iter()
            .all(|c| matches!(c, WebhookClaim::Claimed | WebhookClaim::NotYet)),
        "the others try again later: {claims:?}"
    );

    // Attempt 1 refused and recorded: it is done, and attempt 2 can be taken
    // although attempt 1's lease still runs.
    record(id, WebhookStatus::Pending, 1).await;
    assert_eq!(claim(id, 1, lease).await, WebhookClaim::Done);
    assert_eq!(
        claim(id, 2, Duration::from_millis(300)).await,
        WebhookClaim::Claimed
    );
    assert_eq!(claim(id, 2, lease).await, WebhookClaim::NotYet, "held");
    // A holder that died without recording: its lease ends, and the attempt is taken over.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(claim(id, 2, lease).await, WebhookClaim::Claimed);

    // After a 2xx nothing can be claimed again.
    record(id, WebhookStatus::Delivered, 2).await;
    for attempt in 1..=3 {
        assert_eq!(claim(id, attempt, lease).await, WebhookClaim::Done);
    }
    // Nor after the last attempt failed.
    let given_up = terminal_request(b, true).await;
    record(given_up, WebhookStatus::Failed, 1).await;
    assert_eq!(claim(given_up, 2, lease).await, WebhookClaim::Done);
    // No webhook, no request: nothing to claim.
    let silent = terminal_request(b, false).await;
    assert_eq!(claim(silent, 1, lease).await, WebhookClaim::Done);
    assert_eq!(claim(Uuid::new_v4(), 1, lease).await, WebhookClaim::Done);
}

fn job(id: Uuid, image: u32) -> ImageJob {
    ImageJob {
        request_id: id,
        product: 0,
        serial_number: 1,
        image,
        input_url: format!("https://img.example.com/{image}.jpg"),
        ordinal: image - 1,
        total: 10,
        host_wait: None,
    }
}

pub async fn fan_out_queues_every_image_once_under_one_lease(b: &Backends) {
    // 700 one-image products then 3 of 300 images: several bounded slices.
    let mut sizes = vec![1usize; 700];
    sizes.extend([300, 300, 300]);
    let new = new_request(&sizes, "fanout");
    b.store.create_request(&new).await.unwrap();
    let id = new.id;
    let stored = b.store.get_request(id).await.unwrap().unwrap();
    assert_eq!((stored.queued, stored.progress.total), (0, 1600));

    let lease = Duration::from_secs(60);
    let (a, other) = (Uuid::new_v4(), Uuid::new_v4());
    let FanOutClaim::Claimed { next, queued } = b.store.claim_fan_out(id, a, lease).await.unwrap()
    else {
        panic!("the first claim is taken")
    };
    assert_eq!((next, queued), (0, 0));
    assert!(
        matches!(
            b.store.claim_fan_out(id, other, lease).await.unwrap(),
            FanOutClaim::Busy { retry_after } if retry_after <= lease
        ),
        "a second worker waits"
    );
    let mut next = 0;
    let mut ordinals = Vec::new();
    let mut slices = 0;
    while let Some(slice) = b.store.fan_out_slice(id, next).await.unwrap() {
        assert!(slice.next > next);
        assert!(
            slice.jobs.len() <= 500 || slice.next == next + 1,
            "slices are bounded"
        );
        for job in &slice.jobs {
            let p = &new.products[job.product as usize];
            assert_eq!(job.input_url, p.urls[job.image as usize - 1]);
            assert_eq!((job.serial_number, job.total), (p.serial_number, 1600));
            assert_eq!(job.key(), key(&new, job.product, job.image));
        }
        ordinals.extend(slice.jobs.iter().map(|j| j.ordinal));
        // Only the holder records a slice, and only once.
        assert!(
            !b.store
                .advance_fan_out(id, other, next, slice.next, slice.jobs.len() as u32, lease)
                .await
                .unwrap()
        );
        assert!(
            b.store
                .advance_fan_out(id, a, next, slice.next, slice.jobs.len() as u32, lease)
                .await
                .unwrap()
        );
        assert!(
            !b.store
                .advance_fan_out(id, a, next, slice.next, slice.jobs.len() as u32, lease)
                .await
                .unwrap(),
            "a slice is recorded once"
        );
        next = slice.next;
        slices += 1;
        if slices == 2 {
            // A lease released (or lapsed) lets another worker resume from the cursor.
            assert!(
                b.store
                    .advance_fan_out(id, a, next, next, 0, Duration::ZERO)
                    .await
                    .unwrap()
            );
            match b.store.claim_fan_out(id, other, lease).await.unwrap() {
                FanOutClaim::Claimed { next: n, queued } => {
                    assert_eq!((n, queued as usize), (next, ordinals.len()))
                }
                o => panic!("expected the claim, got {o:?}"),
            }
            assert!(
                !b.store
                    .advance_fan_out(id, a, next, next, 0, lease)
                    .await
                    .unwrap(),
                "the old holder lost it"
            );
            // Continue as the new holder.
            let (x, y) = (a, other);
            return finish_fan_out(b, &new, y, next, ordinals, x).await;
        }
    }
    panic!("the request has more than two slices");
}

async fn finish_fan_out(
    b: &Backends,
    new: &NewRequest,
    owner: Uuid,
    mut next: u32,
    mut ordinals: Vec<u32>,
    old_owner: Uuid,
) {
    let lease = Duration::from_secs(60);
    while let Some(slice) = b.store.fan_out_slice(new.id, next).await.unwrap() {
        ordinals.extend(slice.jobs.iter().map(|j| j.ordinal));
        assert!(
            b.store
                .advance_fan_out(
                    new.id,
                    owner,
                    next,
                    slice.next,
                    slice.jobs.len() as u32,
                    lease
                )
                .await
                .unwrap()
        );
        next = slice.next;
    }
    assert_eq!(
        ordinals,
        (0..1600).collect::<Vec<_>>(),
        "every image once, in order"
    );
    let stored = b.store.get_request(new.id).await.unwrap().unwrap();
    assert_eq!(stored.queued, 1600);
    assert_eq!(
        b.store
            .claim_fan_out(new.id, old_owner, lease)
            .await
            .unwrap(),
        FanOutClaim::Finished
    );
    assert_eq!(
        b.store
            .claim_fan_out(Uuid::new_v4(), owner, lease)
            .await
            .unwrap(),
        FanOutClaim::Missing
    );
}

/// Receives until `n` deliveries arrived or `deadline` passed.
async fn receive_n(
    source: &dyn JobSource,
    n: usize,
    lease: Duration,
    within: Duration,
) -> Vec<imgproc::ports::Delivery> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        let batch = source.receive(10, lease).await.unwrap();
        if batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        got.extend(batch);
    }
    got
}

/// A lease the tests outwait to show that an acknowledged delivery stays
/// gone (a lost acknowledgement would bring it back after the lease).
const SHORT_LEASE: Duration = Duration::from_secs(2);
const PAST_SHORT_LEASE: Duration = Duration::from_millis(2500);

pub async fn the_queue_delivers_acks_and_retries(b: &Backends) {
    let id = Uuid::new_v4();
    let jobs: Vec<ImageJob> = (1..=3).map(|i| job(id, i)).collect();
    b.queue.send(&jobs).await.unwrap();
    let lease = Duration::from_secs(60);
    let got = receive_n(b.source.as_ref(), 3, lease, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 3);
    assert_eq!(
        got.iter().map(|d| d.job.image).collect::<BTreeSet<_>>(),
        BTreeSet::from([1, 2, 3])
    );
    assert!(
        got.iter()
            .all(|d| d.receive_count == 1 && d.job.request_id == id)
    );
    // Leased: nobody else gets them.
    assert!(b.source.receive(10, lease).await.unwrap().is_empty());

    // Handed back: delivered again, counted again.
    let first = got.iter().find(|d| d.job.image == 1).unwrap();
    b.source
        .retry_later(&first.receipt, Duration::ZERO)
        .await
        .unwrap();
    let again = receive_n(b.source.as_ref(), 1, lease, Duration::from_secs(15)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].job.clone(), again[0].receive_count),
        (first.job.clone(), 2)
    );

    // Acked with a short lease: never delivered again, while an un-acked one is.
    for d in got.iter().filter(|d| d.job.image != 1).chain(again.iter()) {
        b.source.ack(&d.receipt).await.unwrap();
    }
    b.queue.send(&[job(id, 9)]).await.unwrap();
    let leased = receive_n(
        b.source.as_ref(),
        1,
        Duration::from_secs(1),
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        leased.iter().map(|d| d.job.image).collect::<Vec<_>>(),
        vec![9]
    );
    // Leased briefly, so that the wait below outlasts the lease: only the
    // acknowledgement keeps it from coming back.
    let back = receive_n(b.source.as_ref(), 1, SHORT_LEASE, Duration::from_secs(15)).await;
    assert_eq!(
        back.iter()
            .map(|d| (d.job.image, d.receive_count))
            .collect::<Vec<_>>(),
        vec![(9, 2)]
    );
    b.source.ack(&back[0].receipt).await.unwrap();
    tokio::time::sleep(PAST_SHORT_LEASE).await;
    assert!(
        b.source.receive(10, lease).await.unwrap().is_empty(),
        "acked jobs never come back"
    );
}

pub async fn a_job_sent_back_for_later_comes_back_once_counted_afresh(b: &Backends) {
    let id = Uuid::new_v4();
    b.queue.send(&[job(id, 1)]).await.unwrap();
    let lease = Duration::from_secs(60);
    let first = receive_n(b.source.as_ref(), 1, lease, Duration::from_secs(15)).await;
    assert_eq!(first.len(), 1);
    // Its second delivery: the first was an attempt.
    b.source
        .retry_later(&first[0].receipt, Duration::ZERO)
        .await
        .unwrap();
    let second = receive_n(b.source.as_ref(), 1, SHORT_LEASE, Duration::from_secs(15)).await;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].receive_count, 2);

    // Sent back for later in its place, then acknowledged as done.
    let waiting = ImageJob {
        host_wait: Some(HostWait {
            attempts: 1,
            waits: 1,
            since_ms: 1_700_000_000_000,
        }),
        ..second[0].job.clone()
    };
    let sent = Instant::now();
    b.queue
        .send_later(&waiting, Duration::from_secs(2))
        .await
        .unwrap();
    b.source.ack(&second[0].receipt).await.unwrap();
    assert!(
        b.source.receive(10, lease).await.unwrap().is_empty(),
        "not before its delay"
    );
    let back = receive_n(b.source.as_ref(), 1, SHORT_LEASE, Duration::from_secs(15)).await;
    assert!(
        sent.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].job, waiting, "it carries what it waited for");
    assert_eq!(back[0].receive_count, 1, "a new message, counted afresh");
    assert_eq!(waiting.attempt(back[0].receive_count), 2);
    b.source.ack(&back[0].receipt).await.unwrap();
    // Once: neither acknowledged delivery comes back once its lease is over.
    tokio::time::sleep(PAST_SHORT_LEASE).await;
    assert!(b.source.receive(10, lease).await.unwrap().is_empty());
}

/// A host of its own per test run, so that runs on one table never share slots.
fn fresh_host() -> String {
    format!("https://img-{}.example.com", Uuid::new_v4().simple())
}

pub async fn host_slots_cap_each_host_and_only_their_holder_frees_them(b: &Backends) {
    let lease = Duration::from_secs(60);
    let (host, other) = (fresh_host(), fresh_host());
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            b.hosts
                .acquire(&host, 3, lease)
                .await
                .unwrap()
                .expect("a free slot"),
        );
    }
    assert_eq!(
        held.iter().map(|s| s.index).collect::<BTreeSet<_>>(),
        BTreeSet::from([0, 1, 2])
    );
    assert!(held.iter().all(|s| s.host == host));
    assert_eq!(
        b.hosts.acquire(&host, 3, lease).await.unwrap(),
        None,
        "the cap holds"
    );
    // Another host has slots of its own.
    let theirs = b
        .hosts
        .acquire(&other, 3, lease)
        .await
        .unwrap()
        .expect("another host");

    // Only the holder frees a slot.
    let forged = imgproc::ports::HostSlot {
        owner: Uuid::new_v4(),
        ..held[1].clone()
    };
    b.hosts.release(&forged).await.unwrap();
    assert_eq!(b.hosts.acquire(&host, 3, lease).await.unwrap(), None);
    b.hosts.release(&held[1]).await.unwrap();
    b.hosts.release(&held[1]).await.unwrap();
    let again = b
        .hosts
        .acquire(&host, 3, lease)
        .await
        .unwrap()
        .expect("freed");
    assert_eq!(again.index, held[1].index);
    assert_ne!(again.owner, held[1].owner);
    assert_eq!(b.hosts.acquire(&host, 3, lease).await.unwrap(), None);
    // A higher cap has room; a lower one is full.
    assert!(b.hosts.acquire(&host, 4, lease).await.unwrap().is_some());
    assert_eq!(b.hosts.acquire(&host, 2, lease).await.unwrap(), None);
    b.hosts.release(&theirs).await.unwrap();

    // A holder that never frees its slot loses it when its lease ends, and
    // its late release leaves the new holder alone.
    let short = fresh_host();
    let lapsing = b
        .hosts
        .acquire(&short, 1, Duration::from_secs(1))
        .await
        .unwrap()
        .expect("free");
    assert_eq!(b.hosts.acquire(&short, 1, lease).await.unwrap(), None);
    let deadline = Instant::now() + Duration::from_secs(15);
    let taker = loop {
        if let Some(s) = b.hosts.acquire(&short, 1, lease).await.unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the lease never ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(taker.owner, lapsing.owner);
    b.hosts.release(&lapsing).await.unwrap();
    assert_eq!(
        b.hosts.acquire(&short, 1, lease).await.unwrap(),
        None,
        "a late release frees nothing"
    );
    b.hosts.release(&taker).await.unwrap();
    assert!(b.hosts.acquire(&short, 1, lease).await.unwrap().is_some());
}

pub async fn racing_workers_never_hold_more_slots_than_the_cap(b: &Backends) {
    let lease = Duration::from_secs(60);
    let host = fresh_host();
    let won: Vec<_> = join_all((0..20).map(|_| b.hosts.acquire(&host, 5, lease)))
        .await
        .into_iter()
        .filter_map(|r| r.unwrap())
        .collect();
    assert!(
        (1..=5).contains(&won.len()),
        "{} of 20 racing workers hold a slot of 5",
        won.len()
    );
    assert_eq!(
        won.iter().map(|s| s.index).collect::<BTreeSet<_>>().len(),
        won.len(),
        "no slot is held twice"
    );
    // The rest are taken one by one, up to the cap exactly.
    let mut total = won.len();
    while b.hosts.acquire(&host, 5, lease).await.unwrap().is_some() {
        total += 1;
        assert!(total <= 5, "more than the cap");
    }
    assert_eq!(total, 5);
}

pub async fn objects_put_get_and_url(b: &Backends) {
    let key = format!("processed/{}/1/1.jpg", Uuid::new_v4());
    let body = Bytes::from_static(b"\xff\xd8\xff\xe0 not really a jpeg");
    b.objects
        .put(&key, body.clone(), "image/jpeg")
        .await
        .unwrap();
    assert_eq!(b.objects.get(&key).await.unwrap(), Some(body.clone()));
    let replaced = Bytes::from_static(b"second version");
    b.objects
        .put(&key, replaced.clone(), "image/jpeg")
        .await
        .unwrap();
    assert_eq!(b.objects.get(&key).await.unwrap(), Some(replaced));
    assert_eq!(b.objects.get("processed/none/1/1.jpg").await.unwrap(), None);
    // The URL handed out is the lasting one: the base and the key, unsigned.
    let url = b.objects.url(&key).await.unwrap();
    assert_eq!(url, format!("{FILES_BASE}{key}"));

    // A download is the object's bytes, or a fresh redirect to them.
    let bytes = match b.objects.download(&key).await.unwrap() {
        Some(Download::Body {
            bytes,
            content_type,
        }) => {
            assert_eq!(content_type, "image/jpeg");
            bytes
        }
        Some(Download::Redirect(location)) => {
            assert!(location.contains("X-Amz-Signature="), "{location}");
            let answer = reqwest::get(&location).await.unwrap();
            assert_eq!(answer.status(), 200);
            answer.bytes().await.unwrap()
        }
        None => panic!("{key} was stored"),
    };
    assert_eq!(&bytes[..], b"second version");
    assert_eq!(
        b.objects.download("processed/none/1/1.jpg").await.unwrap(),
        None
    );
    // A "folder" is no object.
    let folder = key.rsplit_once('/').unwrap().0;
    assert_eq!(b.objects.download(folder).await.unwrap(), None);
}

macro_rules! conformance {
    ($backends:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn create_is_all_or_nothing_and_idempotent() {
            if let Some(b) = $backends().await {
                super::create_is_all_or_nothing_and_idempotent(&b).await
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn products_page_in_input_order() {
            if let Some(b) = $backends().await {
                super::products_page_in_input_order(&b).await
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn an_image_finishes_once_under_concurrent_duplicates() {
            if let Some(b) = $backends().await {
                super::an_image_finishes_once_under_concurrent_duplicates(&b).await
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn a_request_completes_exactly_once() {
            if let Some(b) = $backends().await {
                super::a_request_completes_exactly_once(&b).await
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn fan_out_queues_every_image_once_under_one_lease() {
            if let Some(b) = $backends().await {
                super::fan_out_queues_every_image_once_under_one_lease(&b).await
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn a_webhook_attempt_is_claimed_once() {
            if let Some(b) = $backends().await {
                super::a_webhook_attempt_is_claimed_once(&b).await
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn the_queue_delivers_acks_and_retries() {
            if let Some(b) = $backends().await {
                super::the_queue_delivers_acks_and_retries(&b).await
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn a_job_sent_back_for_later_comes_back_once_counted_afresh() {
            if let Some(b) = $backends().await {
                super::a_job_sent_back_for_later_comes_back_once_counted_afresh(&b).await
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn host_slots_cap_each_host_and_only_their_holder_frees_them() {
            if let Some(b) = $backends().await {
                super::host_slots_cap_each_host_and_only_their_holder_frees_them(&b).await
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn racing_workers_never_hold_more_slots_than_the_cap() {
            if let Some(b) = $backends().await {
                super::racing_workers_never_hold_more_slots_than_the_cap(&b).await
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn objects_put_get_and_url() {
            if let Some(b) = $backends().await {
                super::objects_put_get_and_url(&b).await
            }
        }
    };
}

mod embedded {
    use super::*;
    use imgproc::local::{FsObjectStore, SqliteStore};

    async fn backends() -> Option<Backends> {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("imgproc.sqlite")).unwrap();
        let objects = FsObjectStore::new(dir.path().join("objects"), FILES_BASE);
        Some(Backends {
            store: Arc::new(store.clone()),
            queue: Arc::new(store.clone()),
            source: Arc::new(store),
            objects: Arc::new(objects),
            hosts: Arc::new(imgproc::local::MemoryHostSlots::new()),
            _keep: Box::new(dir),
        })
    }

    conformance!(backends);
}

#[cfg(feature = "aws")]
mod aws {
    use super::*;
    use imgproc::lambda::{Clients, DynamoStore, RowsBucket, S3Objects, SqsQueue};

    /// The AWS adapters on moto, each test on its own queue; `None` (and a
    /// note on stderr) when no moto server was given.
    async fn backends() -> Option<Backends> {
        let Ok(endpoint) = std::env::var("MOTO_ENDPOINT") else {
            eprintln!(
                "skipped: MOTO_ENDPOINT is not set (run scripts/test-aws.sh to test the AWS adapters on moto)"
            );
            return None;
        };
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set with MOTO_ENDPOINT={endpoint} (eval \"$(infra/moto-up.sh)\")"))
        };
        let clients = Clients::new(&imgproc::config::Config::from_env().unwrap()).await;
        let queue_url = clients
            .sqs
            .create_queue()
            .queue_name(format!("conformance-{}", Uuid::new_v4()))
            .send()
            .await
            .expect("create a test queue on moto")
            .queue_url
            .expect("queue URL");
        let queue = SqsQueue::new(clients.sqs.clone(), queue_url);
        let store = DynamoStore::new(
            clients.dynamodb.clone(),
            var("TABLE_NAME"),
            RowsBucket::new(clients.s3.clone(), var("BUCKET")),
        );
        Some(Backends {
            hosts: Arc::new(store.clone()),
            store: Arc::new(store),
            queue: Arc::new(queue.clone()),
            source: Arc::new(queue),
            objects: Arc::new(S3Objects::new(
                clients.s3.clone(),
                var("BUCKET"),
                FILES_BASE,
            )),
            _keep: Box::new(()),
        })
    }

    conformance!(backends);

    #[tokio::test]
    async fn downloads_are_presigned_briefly_and_missing_keys_are_none() {
        let Some(b) = backends().await else { return };
        let key = format!("results/{}.csv", Uuid::new_v4());
        b.objects
            .put(&key, Bytes::from_static(b"a,b\n"), "text/csv")
            .await
            .unwrap();
        let Some(Download::Redirect(location)) = b.objects.download(&key).await.unwrap() else {
            panic!("S3 downloads are redirects")
        };
        assert!(
            location.contains("X-Amz-Signature=") && location.contains("X-Amz-Expires=3600"),
            "{location}"
        );
        let got = reqwest::get(&location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(&got[..], b"a,b\n");
        assert_eq!(
            b.objects
                .download(&format!("results/{}.csv", Uuid::new_v4()))
                .await
                .unwrap(),
            None
        );
    }
}
