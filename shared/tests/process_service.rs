//! `services::process` on its own, on a temporary SQLite store with no
//! worker pool: each test hands the jobs to `process_job` itself, with the
//! receive count a queue would give, so that the retry rules, repeated
//! deliveries and the terminal transition are checked delivery by delivery.
//! The images are the example photographs on a loopback server.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ImageServer, csv_of};
use imgproc::config::Config;
use imgproc::domain::{Compressed, ErrorCode, ImageJob, ImageOutcome, ImageStatus, RequestStatus};
use imgproc::local::{FsObjectStore, MemoryHostSlots, SqliteStore};
use imgproc::metrics::{Event, Recorder};
use imgproc::ports::{JobSource, JobStore};
use imgproc::services::process::{complete_if_done, process_job};
use imgproc::services::submit::{RequestId, Submission, submit};
use imgproc::services::{App, AppParts, Settle};
use uuid::Uuid;

const MAX_ATTEMPTS: u32 = 3;

/// Every event the services recorded, in order.
#[derive(Default)]
struct Events(Mutex<Vec<Event>>);

impl Recorder for Events {
    fn record(&self, event: &Event) {
        self.0.lock().unwrap().push(*event);
    }
}

impl Events {
    fn completions(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, Event::RequestCompleted { .. }))
            .count()
    }

    fn failures(&self) -> Vec<(ErrorCode, bool)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::ImageFailed { code, counted, .. } => Some((*code, *counted)),
                _ => None,
            })
            .collect()
    }
}

struct Harness {
    app: App,
    store: SqliteStore,
    events: Arc<Events>,
    photos: ImageServer,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("imgproc.sqlite")).expect("open SQLite");
    let objects = FsObjectStore::new(dir.path().join("objects"), "http://files.test/files/");
    let config = Config::from_lookup(|name| match name {
        // The photographs are on a loopback server.
        "ALLOW_PRIVATE_NETWORKS" => Some("true".into()),
        "MAX_ATTEMPTS" => Some(MAX_ATTEMPTS.to_string()),
        "RETRY_BASE_DELAY_MS" => Some("1000".into()),
        "FETCH_TIMEOUT_SECS" => Some("10".into()),
        _ => None,
    })
    .expect("valid test config");
    let events = Arc::new(Events::default());
    let app = App::new(
        config,
        AppParts {
            store: Arc::new(store.clone()),
            // Jobs wait in SQLite until a test takes them.
            queue: Arc::new(store.clone()),
            fanout: None,
            objects: Arc::new(objects),
            hosts: Arc::new(MemoryHostSlots::new()),
            metrics: events.clone(),
            net_exempt: Vec::new(),
            lookup: None,
            cpu_threads: 1,
        },
    )
    .expect("app");
    Harness {
        app,
        store,
        events,
        photos: ImageServer::start().await,
        _dir: dir,
    }
}

impl Harness {
    /// A request of `products` one-image products whose images have all
    /// failed (nothing fetched), not yet completed; its final counts.
    async fn finished_request(&self, products: u32) -> (Uuid, imgproc::domain::Progress) {
        let names: Vec<String> = (1..=products).map(|i| format!("Product {i}")).collect();
        let rows: Vec<(u64, &str, Vec<String>)> = names
            .iter()
            .zip(1u64..)
            .map(|(name, i)| {
                (
                    i,
                    name.as_str(),
                    vec![format!("https://img.example.com/{i}.jpg")],
                )
            })
            .collect();
        let accepted = submit(
            &self.app,
            Submission {
                csv: csv_of(&rows).as_bytes(),
                webhook_url: None,
                id: RequestId::Random,
                client: None,
            },
        )
        .await
        .expect("a valid CSV is accepted");
        let mut progress = None;
        loop {
            let batch = self
                .store
                .receive(100, Duration::from_secs(600))
                .await
                .unwrap();
            if batch.is_empty() {
                break;
            }
            for d in batch {
                let outcome = ImageOutcome::Failed {
                    error: imgproc::domain::ImageError::new(
                        ErrorCode::HttpStatus,
                        "the server answered 404",
                    ),
                    input_bytes: None,
                };
                let finished = self
                    .store
                    .finish_image(d.job.key(), &outcome)
                    .await
                    .unwrap();
                progress = progress.or(finished.all_done);
            }
        }
        (
            accepted.request_id,
            progress.expect("the last image finishes the request"),
        )
    }
    /// Submits one product with these image URLs; its jobs, by image.
    async fn request(&self, urls: Vec<String>) -> (Uuid, Vec<ImageJob>) {
        let csv = csv_of(&[(1, "Product", urls)]);
        let accepted = submit(
            &self.app,
            Submission {
                csv: csv.as_bytes(),
                webhook_url: None,
                id: RequestId::Random,
                client: None,
            },
        )
        .await
        .expect("a valid CSV is accepted");
        let mut jobs: Vec<ImageJob> = self
            .store
            .receive(100, Duration::from_secs(600))
            .await
            .expect("the queued jobs")
            .into_iter()
            .map(|d| d.job)
            .collect();
        jobs.sort_by_key(|j| j.image);
        assert_eq!(jobs.len() as u32, accepted.images);
        (accepted.request_id, jobs)
    }

    async fn image_status(&self, job: &ImageJob) -> ImageStatus {
        self.store
            .image_status(job.key())
            .await
            .expect("store answers")
            .expect("the image exists")
    }

    async fn status(&self, id: Uuid) -> (Option<RequestStatus>, (u32, u32, u32)) {
        let r = self
            .store
            .get_request(id)
            .await
            .expect("store answers")
            .expect("the request exists");
        let p = r.progress;
        (r.terminal, (p.total, p.succeeded, p.failed))
    }
}

#[tokio::test]
async fn a_transient_failure_is_retried_until_the_last_attempt_and_terminal_on_it() {
    let h = harness().await;
    let (id, jobs) = h.request(vec![h.photos.url("/status/503")]).await;
    let job = &jobs[0];

    // Before the last attempt: back to the queue after the backoff, nothing recorded.
    for (attempt, delay) in [(1, 1), (2, 2)] {
        let settle = process_job(&h.app, job, attempt).await.unwrap();
        assert_eq!(settle, Settle::RetryAfter(Duration::from_secs(delay)));
        assert_eq!(h.image_status(job).await, ImageStatus::Pending);
        assert_eq!(h.status(id).await, (None, (1, 0, 0)));
    }
    assert!(h.events.failures().is_empty());

    // The last attempt's failure is the image's outcome, and the request ends.
    let settle = process_job(&h.app, job, MAX_ATTEMPTS).await.unwrap();
    assert_eq!(settle, Settle::Done);
    assert_eq!(h.image_status(job).await, ImageStatus::Failed);
    assert_eq!(h.status(id).await, (Some(RequestStatus::Failed), (1, 0, 1)));
    assert_eq!(h.events.failures(), [(ErrorCode::HttpStatus, true)]);
    assert_eq!(h.events.completions(), 1);
    assert_eq!(h.photos.hits("/status/503"), MAX_ATTEMPTS);
}

#[tokio::test]
async fn a_permanent_failure_is_terminal_on_the_first_attempt() {
    let h = harness().await;
    let (id, jobs) = h.request(vec![h.photos.url("/status/404")]).await;
    let settle = process_job(&h.app, &jobs[0], 1).await.unwrap();
    assert_eq!(settle, Settle::Done);
    assert_eq!(h.status(id).await, (Some(RequestStatus::Failed), (1, 0, 1)));
    assert_eq!(h.photos.hits("/status/404"), 1);
}

#[tokio::test]
async fn a_delivery_past_the_last_attempt_fails_as_worker_crashed_without_a_fetch() {
    let h = harness().await;
    let (id, jobs) = h
        .request(vec![
            h.photos.photo("coffee.jpg"),
            h.photos.photo("chelsea-cat.png"),
        ])
        .await;
    assert_eq!(
        process_job(&h.app, &jobs[0], 1).await.unwrap(),
        Settle::Done
    );
    // Every earlier delivery of the second image died before recording anything.
    let settle = process_job(&h.app, &jobs[1], MAX_ATTEMPTS + 1)
        .await
        .unwrap();
    assert_eq!(settle, Settle::Done);
    assert_eq!(h.photos.hits("/photos/chelsea-cat.png"), 0);
    assert_eq!(h.image_status(&jobs[1]).await, ImageStatus::Failed);
    assert_eq!(h.events.failures(), [(ErrorCode::WorkerCrashed, true)]);
    assert_eq!(
        h.status(id).await,
        (Some(RequestStatus::CompletedWithErrors), (2, 1, 1))
    );
    assert_eq!(h.events.completions(), 1);
}

#[tokio::test]
async fn a_repeat_delivery_of_a_finished_image_completes_the_request_without_counting_it_again() {
    let h = harness().await;
    let (id, jobs) = h
        .request(vec![
            h.photos.photo("coffee.jpg"),
            h.photos.photo("paint-brushes.webp"),
        ])
        .await;
    assert_eq!(
        process_job(&h.app, &jobs[0], 1).await.unwrap(),
        Settle::Done
    );
    // The first delivery of the last image recorded it, then died before
    // the terminal transition.
    let recorded = h
        .store
        .finish_image(
            jobs[1].key(),
            &ImageOutcome::Succeeded(Compressed {
                output_key: jobs[1].output_key(),
                input_bytes: 1000,
                output_bytes: 400,
                width: 64,
                height: 48,
                original_kept: false,
            }),
        )
        .await
        .unwrap();
    assert!(recorded.applied);
    assert_eq!(h.status(id).await, (None, (2, 2, 0)));

    let settle = process_job(&h.app, &jobs[1], 2).await.unwrap();
    assert_eq!(settle, Settle::Done);
    // Neither fetched nor counted again, and the request ended.
    assert_eq!(h.photos.hits("/photos/paint-brushes.webp"), 0);
    assert_eq!(h.image_status(&jobs[1]).await, ImageStatus::Succeeded);
    assert_eq!(
        h.status(id).await,
        (Some(RequestStatus::Completed), (2, 2, 0))
    );
    assert_eq!(h.events.completions(), 1);
    assert!(h.events.failures().is_empty());
}

#[tokio::test]
async fn the_terminal_transition_happens_once() {
    let h = harness().await;
    let (id, jobs) = h.request(vec![h.photos.photo("coffee.jpg")]).await;
    let job = &jobs[0];

    // Two first deliveries at once (SQS delivers at least once): both do
    // the work, one counts it, one ends the request.
    let (a, b) = tokio::join!(process_job(&h.app, job, 1), process_job(&h.app, job, 1));
    assert_eq!((a.unwrap(), b.unwrap()), (Settle::Done, Settle::Done));
    let (terminal, progress) = h.status(id).await;
    assert_eq!(terminal, Some(RequestStatus::Completed));
    assert_eq!(progress, (1, 1, 0));
    assert_eq!(h.events.completions(), 1);

    // A later repeat and a second try at the transition change nothing.
    assert_eq!(process_job(&h.app, job, 2).await.unwrap(), Settle::Done);
    let progress = h.store.get_request(id).await.unwrap().unwrap().progress;
    complete_if_done(&h.app, id, progress).await.unwrap();
    assert_eq!(h.status(id).await, (terminal, (1, 1, 0)));
    assert_eq!(h.events.completions(), 1);
    assert_eq!(h.photos.hits("/photos/coffee.jpg"), 2);
}

#[tokio::test]
async fn a_large_results_csv_is_built_in_stored_parts_and_resumes_from_them() {
    use imgproc::domain::{results_key, results_part_key};
    use imgproc::services::results::{self, Completion, PART_PRODUCTS};
    use std::time::Instant;

    let h = harness().await;
    // One product more than a part holds: two parts.
    let products = PART_PRODUCTS + 1;
    let (id, progress) = h.finished_request(products).await;
    assert_eq!((progress.total, progress.failed), (products, products));

    // A run whose deadline is already near builds nothing and pauses.
    let paused = results::complete(&h.app, id, progress, Some(Instant::now()))
        .await
        .unwrap();
    assert_eq!(paused, Completion::Paused);
    assert_eq!(h.status(id).await.0, None, "not terminal yet");
    let part = |n| results_part_key(id, n);
    assert_eq!(h.app.objects.get(&part(0)).await.unwrap(), None);

    // A part stored by an earlier run is taken as it is, not built again
    // (a marker stands in for it here), and the missing one is built.
    let marker = "MARKER,stored by an earlier run\r\n";
    h.app
        .objects
        .put(&part(1), marker.as_bytes().to_vec().into(), "text/csv")
        .await
        .unwrap();
    let later = Some(Instant::now() + Duration::from_secs(3600));
    let done = results::complete(&h.app, id, progress, later)
        .await
        .unwrap();
    assert_eq!(done, Completion::Completed { won: true });
    assert_eq!(
        h.status(id).await.0,
        Some(RequestStatus::Failed),
        "every image failed"
    );
    let first = h
        .app
        .objects
        .get(&part(0))
        .await
        .unwrap()
        .expect("part 0 stored");
    let csv = h
        .app
        .objects
        .get(&results_key(id))
        .await
        .unwrap()
        .expect("results CSV");
    assert_eq!(csv, [&first[..], marker.as_bytes()].concat());

    // Built in one go, the document is part 0 and the real part 1: the
    // header, then every product in input order.
    let whole = results::build(&h.app, id, products).await.unwrap();
    assert!(whole.starts_with(&first));
    let text = String::from_utf8(whole).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() as u32, products + 1);
    assert!(lines[0].starts_with("S. No.,Product Name"));
    assert!(lines[products as usize].starts_with(&format!("{products},Product {products},")));
    assert!(!first.ends_with(marker.as_bytes()));

    // Another run changes nothing: the request completed once.
    let again = results::complete(&h.app, id, progress, later)
        .await
        .unwrap();
    assert_eq!(again, Completion::Completed { won: false });
    assert_eq!(h.events.completions(), 1);

    // Built part by part with nothing stored before, the document is the
    // one built in one go, and so are its stored parts joined.
    let (other, progress) = h.finished_request(products).await;
    let done = results::complete(&h.app, other, progress, later)
        .await
        .unwrap();
    assert_eq!(done, Completion::Completed { won: true });
    let stored = h
        .app
        .objects
        .get(&results_key(other))
        .await
        .unwrap()
        .unwrap();
    let whole = results::build(&h.app, other, products).await.unwrap();
    assert_eq!(stored, whole);
    let mut joined = Vec::new();
    for n in 0..2 {
        joined.extend_from_slice(
            &h.app
                .objects
                .get(&results_part_key(other, n))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(joined, whole);
}
