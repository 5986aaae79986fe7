//! End to end on the embedded adapters: the router, the worker pool and the
//! notifier against loopback servers of real photographs and a webhook
//! receiver. Every response is also held to the OpenAPI document.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::openapi::assert_schema;
use common::service::{Service, WEBHOOK_SECRET};
use common::{ImageServer, PHOTOS, WebhookReceiver, csv_of};
use imgproc::services::notify::signature;
use serde_json::Value;

fn images(status: &Value) -> Vec<Value> {
    status["products"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["images"].as_array().unwrap().clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn happy_path_compresses_every_photo_and_signs_one_webhook() {
    let images_srv = ImageServer::start().await;
    let hook = WebhookReceiver::start(0).await;
    let svc = Service::start(&[]).await;
    let rows: Vec<(u64, &str, Vec<String>)> = vec![
        (
            10,
            "Cups",
            vec![images_srv.photo(PHOTOS[0]), images_srv.photo(PHOTOS[1])],
        ),
        (20, "Portrait", vec![images_srv.photo(PHOTOS[2])]),
        (
            30,
            "Mixed formats",
            PHOTOS[3..].iter().map(|p| images_srv.photo(p)).collect(),
        ),
    ];
    let csv = csv_of(&rows);
    let accepted = svc
        .submit_to(&format!("/v1/requests?webhook_url={}", hook.url()), &csv)
        .await;
    assert_schema("SubmitResponse", &accepted);
    assert_eq!(
        (accepted["products"].as_u64(), accepted["images"].as_u64()),
        (Some(3), Some(7))
    );
    let id = accepted["request_id"].as_str().unwrap().to_owned();
    assert_eq!(accepted["status_url"], format!("/v1/requests/{id}"));

    let status = svc.wait_done(&id).await;
    assert_schema("RequestStatus", &status);
    assert_eq!(status["status"], "completed");
    assert_eq!(status["progress"]["succeeded"], 7);
    assert_eq!(status["progress"]["percent"], 100.0);
    assert_eq!(status["progress"]["queued"], 7, "every image queued");
    assert!(status["completed_at"].is_string());
    let serials: Vec<u64> = status["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["serial_number"].as_u64().unwrap())
        .collect();
    assert_eq!(serials, [10, 20, 30], "products come back in input order");
    for img in images(&status) {
        assert_eq!(img["status"], "succeeded", "{img:#}");
        assert!(
            img["output_bytes"].as_u64().unwrap() < img["input_bytes"].as_u64().unwrap(),
            "{img:#}"
        );
        assert!(img["error"].is_null());
    }
    // The portrait is stored sideways with EXIF orientation 6: output is upright.
    let portrait = &status["products"][1]["images"][0];
    assert_eq!(
        (portrait["width"].as_u64(), portrait["height"].as_u64()),
        (Some(384), Some(512))
    );

    // Output URLs are served by /files and are JPEGs.
    let out_url = portrait["output_url"].as_str().unwrap();
    let path = out_url
        .strip_prefix("http://files.test")
        .expect("output URL under the files base");
    assert!(
        path.ends_with(&format!("/processed/{id}/20/1.jpg")),
        "{path}"
    );
    let (code, headers, body) = svc
        .call(Request::get(path).body(Body::empty()).unwrap())
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "image/jpeg");
    assert_eq!(&body[..3], &[0xFF, 0xD8, 0xFF]);

    // The output CSV: one output per input, in order; the same file is stored under results/.
    let (code, headers, csv_out) = svc
        .call(
            Request::get(format!("/v1/requests/{id}/output.csv"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = String::from_utf8(csv_out.to_vec()).unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(
        reader.headers().unwrap(),
        vec![
            "S. No.",
            "Product Name",
            "Input Image Urls",
            "Output Image Urls"
        ]
    );
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 3);
    assert_eq!(&records[0][2], rows[0].2.join(","));
    assert_eq!(records[2][3].split(',').count(), 4);
    assert!(records.iter().all(|r| {
        r[3].split(',')
            .all(|u| u.starts_with("http://files.test/files/processed/"))
    }));
    let stored =
        std::fs::read_to_string(svc.dir.path().join(format!("objects/results/{id}.csv"))).unwrap();
    assert_eq!(stored, text);
    assert_eq!(
        status["output_csv_url"],
        format!("http://files.test/files/results/{id}.csv")
    );
    // output.csv and output_csv_url are one document, and every output
    // URL in it is served by /files without a token.
    let csv_path = status["output_csv_url"]
        .as_str()
        .unwrap()
        .strip_prefix("http://files.test")
        .unwrap();
    let (code, _, linked) = svc
        .call(Request::get(csv_path).body(Body::empty()).unwrap())
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(linked, csv_out, "output_csv_url and output.csv differ");
    // Built again from the store (were the stored file lost), it is the
    // same document: its URLs never change.
    std::fs::remove_file(svc.dir.path().join(format!("objects/results/{id}.csv"))).unwrap();
    let (code, _, rebuilt) = svc
        .call(
            Request::get(format!("/v1/requests/{id}/output.csv"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(rebuilt, csv_out);
    let (code, _, _) = svc
        .call(Request::get(csv_path).body(Body::empty()).unwrap())
        .await;
    assert_eq!(
        code,
        StatusCode::NOT_FOUND,
        "the link names the stored file"
    );
    for url in records
        .iter()
        .flat_map(|r| r[3].split(',').map(str::to_owned).collect::<Vec<_>>())
    {
        let path = url.strip_prefix("http://files.test").unwrap();
        let (code, headers, body) = svc
            .call(Request::get(path).body(Body::empty()).unwrap())
            .await;
        assert_eq!(code, StatusCode::OK, "{url}");
        assert_eq!(headers[header::CONTENT_TYPE], "image/jpeg");
        assert_eq!(&body[..3], &[0xFF, 0xD8, 0xFF], "{url}");
    }

    // Exactly one webhook, signed, with the event's fields.
    let calls = hook.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.header("content-type"), "application/json");
    assert_eq!(call.header("x-imgproc-event"), "request.completed");
    assert_eq!(
        call.header("x-imgproc-signature"),
        signature(WEBHOOK_SECRET, &call.body)
    );
    assert!(!call.header("x-imgproc-delivery").is_empty());
    let event = call.json();
    assert_schema("WebhookEvent", &event);
    assert_eq!(event["request_id"], id);
    assert_eq!(event["status"], "completed");
    assert_eq!(event["progress"]["total"], 7);
    assert_eq!(event["output_csv_url"], status["output_csv_url"]);
    assert_eq!(status["webhook"]["status"], "delivered");
    assert_eq!(status["webhook"]["attempts"], 1);
    svc.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partial_failure_reports_each_image_and_leaves_its_output_empty() {
    let srv = ImageServer::start().await;
    let svc = Service::start(&[]).await;
    let csv = csv_of(&[
        (1, "Good", vec![srv.photo("coffee.jpg")]),
        (
            2,
            "Mixed",
            vec![
                srv.url("/status/404"),
                srv.url("/html"),
                srv.photo("chelsea-cat.png"),
            ],
        ),
    ]);
    let id = svc.submit(&csv).await["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = svc.wait_done(&id).await;
    assert_schema("RequestStatus", &status);
    assert_eq!(status["status"], "completed_with_errors");
    assert_eq!(
        (
            status["progress"]["succeeded"].as_u64(),
            status["progress"]["failed"].as_u64()
        ),
        (Some(2), Some(2))
    );
    let mixed = &status["products"][1]["images"];
    assert_eq!(mixed[0]["error"]["code"], "http_status");
    assert_eq!(mixed[1]["error"]["code"], "not_an_image");
    assert!(mixed[0]["output_url"].is_null());
    assert_eq!(mixed[2]["status"], "succeeded");
    assert_eq!(
        srv.hits("/status/404"),
        1,
        "a permanent error is not retried"
    );
    let (_, _, csv_out) = svc
        .call(
            Request::get(format!("/v1/requests/{id}/output.csv"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    let text = String::from_utf8(csv_out.to_vec()).unwrap();
    let row = text.lines().nth(2).unwrap();
    assert!(
        row.contains("\",,http://files.test/"),
        "failed entries stay empty: {row}"
    );
    assert!(status["webhook"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_whose_images_all_fail_is_failed() {
    let srv = ImageServer::start().await;
    let svc = Service::start(&[]).await;
    let id = svc
        .submit(&csv_of(&[(1, "Gone", vec![srv.url("/status/410")])]))
        .await["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = svc.wait_done(&id).await;
    assert_eq!(status["status"], "failed");
    assert_eq!(
        status["products"][0]["images"][0]["error"]["message"],
        "the server answered HTTP 410"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transient_failures_are_retried_up_to_max_attempts() {
    let srv = ImageServer::start().await;
    let svc = Service::start(&[("MAX_ATTEMPTS", "3")]).await;
    let csv = csv_of(&[
        (1, "Recovers", vec![srv.url("/flaky/2/coffee.jpg")]),
        (2, "Never", vec![srv.url("/flaky/99/coffee.jpg")]),
    ]);
    let id = svc.submit(&csv).await["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = svc.wait_done(&id).await;
    assert_eq!(status["products"][0]["images"][0]["status"], "succeeded");
    assert_eq!(srv.hits("/flaky/2/coffee.jpg"), 3);
    let never = &status["products"][1]["images"][0];
    assert_eq!(never["status"], "failed");
    assert_eq!(never["error"]["code"], "http_status");
    assert_eq!(
        srv.hits("/flaky/99/coffee.jpg"),
        3,
        "exactly MAX_ATTEMPTS tries"
    );
    assert_eq!(status["progress"]["failed"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn download_limits_are_enforced() {
    let srv = ImageServer::start().await;
    let svc = Service::start(&[
        ("MAX_DOWNLOAD_BYTES", "100000"),
        ("FETCH_TIMEOUT_SECS", "1"),
        ("MAX_ATTEMPTS", "1"),
    ])
    .await;
    let csv = csv_of(&[(
        1,
        "Limits",
        vec![
            srv.url("/endless"),
            srv.photo("chelsea-cat.png"),
            srv.url("/slow/3000/coffee.jpg"),
            srv.photo("missing.jpg"),
        ],
    )]);
    let id = svc.submit(&csv).await["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = svc.wait_done(&id).await;
    let imgs = images(&status);
    assert_eq!(
        imgs[0]["error"]["code"], "too_large",
        "a body without Content-Length is capped while streaming"
    );
    assert_eq!(
        imgs[1]["error"]["code"], "too_large",
        "240 kB photo over a 100 kB cap"
    );
    assert_eq!(imgs[2]["error"]["code"], "timeout");
    assert_eq!(imgs[3]["error"]["code"], "http_status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redirects_are_followed_up_to_five() {
    let srv = ImageServer::start().await;
    let svc = Service::start(&[]).await;
    let mut url = srv.photo("coffee.jpg");
    let mut chains = Vec::new();
    for _ in 0..6 {
        url = srv.url(&format!(
            "/redirect?to={}",
            url::form_urlencoded::byte_serialize(url.as_bytes()).collect::<String>()
        ));
        chains.push(url.clone());
    }
    let id = svc
        .submit(&csv_of(&[
            (1, "Five", vec![chains[4].clone()]),
            (2, "Six", vec![chains[5].clone()]),
        ]))
        .await["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = svc.wait_done(&id).await;
    assert_eq!(status["products"][0]["images"][0]["status"], "succeeded");
    assert_eq!(status["products"][1]["images"][0]["status"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_webhook_is_retried_with_the_same_delivery_id_and_signature() {
    let srv = ImageServer::start().await;
    let hook = WebhookReceiver::start(2).await;
    let svc = Service::start(&[]).await;
    let id = svc
        .submit_with_webhook(
            &hook.url(),
            &csv_of(&[(1, "A", vec![srv.photo("coffee.jpg")])]),
        )
        .await;
    let status = svc.wait_done(&id).await;
    assert_eq!(status["webhook"]["status"], "delivered");
    assert_eq!(status["webhook"]["attempts"], 3);
    let calls = hook.calls();
    assert_eq!(
        calls.len(),
        3,
        "two failures, then one success, then nothing"
    );
    let delivery = calls[0].header("x-imgproc-delivery").to_owned();
    for c in &calls {
        assert_eq!(c.header("x-imgproc-delivery"), delivery);
        assert_eq!(
            c.header("x-imgproc-signature"),
            signature(WEBHOOK_SECRET, &c.body)
        );
        assert_eq!(c.body, calls[0].body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_that_never_succeeds_is_failed_after_its_attempts() {
    let srv = ImageServer::start().await;
    let hook = WebhookReceiver::start(u32::MAX).await;
    let svc = Service::start(&[("WEBHOOK_MAX_ATTEMPTS", "3")]).await;
    let id = svc
        .submit_with_webhook(
            &hook.url(),
            &csv_of(&[(1, "A", vec![srv.photo("coffee.jpg")])]),
        )
        .await;
    let status = svc.wait_done(&id).await;
    assert_eq!(status["webhook"]["status"], "failed");
    assert_eq!(status["webhook"]["attempts"], 3);
    assert_eq!(hook.calls().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_key_returns_the_first_answer_and_refuses_a_different_body() {
    let srv = ImageServer::start().await;
    let svc = Service::start(&[]).await;
    let csv = csv_of(&[(1, "A", vec![srv.photo("coffee.jpg")])]);
    let post = |body: String, key: &str| {
        Request::post("/v1/requests")
            .header(header::CONTENT_TYPE, "text/csv")
            .header("Idempotency-Key", key)
            .body(Body::from(body))
            .unwrap()
    };
    let (c1, first) = svc.json(post(csv.clone(), "order-1")).await;
    assert_eq!(c1, StatusCode::ACCEPTED);
    svc.wait_done(first["request_id"].as_str().unwrap()).await;
    let (c2, second) = svc.json(post(csv.clone(), "order-1")).await;
    assert_eq!(c2, StatusCode::ACCEPTED);
    assert_eq!(first, second, "a repeat gets the first answer");
    let (c3, conflict) = svc.json(post(csv.replace("A,", "B,"), "order-1")).await;
    assert_eq!(c3, StatusCode::CONFLICT);
    assert_eq!(conflict["error"]["code"], "conflict");
    assert_schema("Error", &conflict);
    let (c4, other) = svc.json(post(csv, "order-2")).await;
    assert_eq!(c4, StatusCode::ACCEPTED);
    assert_ne!(other["request_id"], first["request_id"]);
    svc.wait_done(other["request_id"].as_str().unwrap()).await;
    assert_eq!(
        srv.hits("/photos/coffee.jpg"),
        2,
        "the repeat created no work"
    );
}

const ACME_TOKEN: &str = "acme-token-0123456789abcdef0123456789";
const GLOBEX_TOKEN: &str = "globex-token-0123456789abcdef01234567";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_keys_are_scoped_and_their_requests_private() {
    let srv = ImageServer::start().await;
    let tokens = format!("acme:{ACME_TOKEN}\nglobex:{GLOBEX_TOKEN}");
    let svc = Service::start(&[("API_TOKENS", &tokens)]).await;
    let csv = csv_of(&[(1, "A", vec![srv.photo("coffee.jpg")])]);
    let post = |token: &str| {
        Request::post("/v1/requests")
            .header(header::CONTENT_TYPE, "text/csv")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header("Idempotency-Key", "order-42")
            .body(Body::from(csv.clone()))
            .unwrap()
    };
    let get = |uri: &str, token: &str| {
        Request::get(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    let (code, acme) = svc.json(post(ACME_TOKEN)).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{acme}");
    let (code, globex) = svc.json(post(GLOBEX_TOKEN)).await;
    assert_eq!(
        code,
        StatusCode::ACCEPTED,
        "one client's key never blocks another's: {globex}"
    );
    let (acme_id, globex_id) = (
        acme["request_id"].as_str().unwrap().to_owned(),
        globex["request_id"].as_str().unwrap().to_owned(),
    );
    assert_ne!(
        acme_id, globex_id,
        "the same key of two clients: two requests"
    );
    let (code, again) = svc.json(post(ACME_TOKEN)).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    assert_eq!(
        again, acme,
        "a client repeating its key gets its first answer"
    );

    // Finished, so output.csv exists: only its owner reads either route.
    for (id, token) in [(&acme_id, ACME_TOKEN), (&globex_id, GLOBEX_TOKEN)] {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (code, status) = svc.json(get(&format!("/v1/requests/{id}"), token)).await;
            assert_eq!(code, StatusCode::OK, "the owner reads its request");
            if common::is_terminal(&status) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never finished: {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for (id, owner, other) in [
        (&acme_id, ACME_TOKEN, GLOBEX_TOKEN),
        (&globex_id, GLOBEX_TOKEN, ACME_TOKEN),
    ] {
        for uri in [
            format!("/v1/requests/{id}"),
            format!("/v1/requests/{id}/output.csv"),
        ] {
            let (code, _, _) = svc.call(get(&uri, owner)).await;
            assert_eq!(code, StatusCode::OK, "{uri}");
            let (code, body) = svc.json(get(&uri, other)).await;
            assert_eq!(code, StatusCode::NOT_FOUND, "another client's {uri}");
            assert_eq!(body["error"]["code"], "not_found");
            assert_schema("Error", &body);
            // Exactly the answer for a request that does not exist.
            let missing = uri.replace(id.as_str(), &uuid::Uuid::new_v4().to_string());
            assert_eq!(svc.json(get(&missing, other)).await, (code, body));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_kept_request_id_secret_answers_a_repeat_after_a_restart() {
    let srv = ImageServer::start().await;
    let svc = Service::start(&[]).await;
    let csv = csv_of(&[(1, "A", vec![srv.photo("coffee.jpg")])]);
    let post = || {
        Request::post("/v1/requests")
            .header(header::CONTENT_TYPE, "text/csv")
            .header("Idempotency-Key", "order-7")
            .body(Body::from(csv.clone()))
            .unwrap()
    };
    let (code, first) = svc.json(post()).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    let id = first["request_id"].as_str().unwrap().to_owned();
    svc.wait_done(&id).await;
    let path = svc
        .dir
        .path()
        .join(imgproc::local::runtime::REQUEST_ID_SECRET_FILE);
    let kept = std::fs::read_to_string(&path).expect("the secret is kept in the data folder");
    assert_eq!(kept.trim().len(), 64, "32 random bytes, hex");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "readable by its owner only");
    }
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    assert_eq!(uuid.get_version_num(), 8, "an HMAC, not a name-based UUID");

    let svc = svc.restart().await;
    let (code, again) = svc.json(post()).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    assert_eq!(
        again["request_id"], first["request_id"],
        "the same ID after a restart"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), kept, "made once");
    assert_eq!(
        srv.hits("/photos/coffee.jpg"),
        1,
        "the repeat created no work"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_pages_products_in_input_order() {
    let srv = ImageServer::start().await;
    let svc = Service::start(&[]).await;
    let rows: Vec<(u64, &str, Vec<String>)> = (1..=25)
        .map(|i| (i * 7, "P", vec![srv.photo("coffee.jpg")]))
        .collect();
    let id = svc.submit(&csv_of(&rows)).await["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    svc.wait_done(&id).await;
    let mut serials = Vec::new();
    let mut query = "?limit=10".to_owned();
    let mut pages = 0;
    loop {
        let (code, page) = svc.status(&id, &query).await;
        assert_eq!(code, StatusCode::OK);
        assert_schema("RequestStatus", &page);
        pages += 1;
        serials.extend(
            page["products"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["serial_number"].as_u64().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => query = format!("?limit=10&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(serials, (1..=25).map(|i| i * 7).collect::<Vec<_>>());
    let (_, all) = svc.status(&id, "?limit=5000").await;
    assert_eq!(
        all["products"].as_array().unwrap().len(),
        25,
        "limits above 1000 are clamped, not refused"
    );
    assert!(all["next_cursor"].is_null());
    let (_, default) = svc.status(&id, "").await;
    assert_eq!(default["products"].as_array().unwrap().len(), 25);
    for bad in [
        "?limit=0",
        "?limit=-3",
        "?limit=ten",
        "?cursor=bogus",
        "?cursor=",
    ] {
        let (code, err) = svc.status(&id, bad).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(err["error"]["code"], "invalid_request");
    }
    // A cursor issued for another request is refused too.
    let other = svc.submit(&csv_of(&rows)).await["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, page) = svc.status(&id, "?limit=10").await;
    let (code, _) = svc
        .status(
            &other,
            &format!("?cursor={}", page["next_cursor"].as_str().unwrap()),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bearer_auth_guards_every_v1_route() {
    let srv = ImageServer::start().await;
    let svc = Service::start(&[("API_TOKEN", "t0ken")]).await;
    let csv = csv_of(&[(1, "A", vec![srv.photo("coffee.jpg")])]);
    let submit = |auth: Option<&str>| {
        let mut r = Request::post("/v1/requests").header(header::CONTENT_TYPE, "text/csv");
        if let Some(a) = auth {
            r = r.header(header::AUTHORIZATION, a);
        }
        r.body(Body::from(csv.clone())).unwrap()
    };
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("t0ken"),
        Some("Basic dDBrZW4="),
        Some("Bearer "),
    ] {
        let (code, body) = svc.json(submit(auth)).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(body["error"]["code"], "unauthorized");
        assert_schema("Error", &body);
    }
    let (code, accepted) = svc.json(submit(Some("Bearer t0ken"))).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    let id = accepted["request_id"].as_str().unwrap();
    for uri in [
        format!("/v1/requests/{id}"),
        format!("/v1/requests/{id}/output.csv"),
    ] {
        let (code, _, _) = svc
            .call(Request::get(&uri).body(Body::empty()).unwrap())
            .await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{uri}");
        let (code, _, _) = svc
            .call(
                Request::get(&uri)
                    .header(header::AUTHORIZATION, "Bearer t0ken")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_ne!(code, StatusCode::UNAUTHORIZED, "{uri}");
    }
    let (code, health) = svc
        .json(Request::get("/health").body(Body::empty()).unwrap())
        .await;
    assert_eq!(code, StatusCode::OK, "health needs no token");
    assert_schema("Health", &health);
    // The web page asks for the token itself; loading it needs none.
    for uri in ["/", "/assets/app.js", "/assets/style.css"] {
        let (code, headers, _) = svc
            .call(Request::get(uri).body(Body::empty()).unwrap())
            .await;
        assert_eq!(code, StatusCode::OK, "{uri} needs no token");
        assert!(
            headers.contains_key(header::CONTENT_SECURITY_POLICY),
            "{uri}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_submissions_get_the_contract_errors_and_store_nothing() {
    let srv = ImageServer::start().await;
    let svc = Service::start(&[("MAX_UPLOAD_BYTES", "2000")]).await;
    let good = csv_of(&[(1, "A", vec![srv.photo("coffee.jpg")])]);
    let cases: Vec<(Request<Body>, StatusCode, &str)> =
        vec![
        (
            Request::post("/v1/requests")
                .body(Body::from(good.clone()))
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            Request::post("/v1/requests")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{}"))
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            Request::post("/v1/requests")
                .header(header::CONTENT_TYPE, "text/csv")
                .body(Body::from("x".repeat(2001)))
                .unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            Request::post("/v1/requests")
                .header(header::CONTENT_TYPE, "text/csv")
                .body(Body::from(
                    "S. No.,Product Name,Input Image Urls\n0,,ftp://x\n1,B,https://e.com/a.jpg\n",
                ))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_csv",
        ),
        (
            Request::post("/v1/requests?webhook_url=not-a-url")
                .header(header::CONTENT_TYPE, "text/csv")
                .body(Body::from(good.clone()))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Request::post("/v1/requests?webhook_url=ftp://h.example/x")
                .header(header::CONTENT_TYPE, "text/csv")
                .body(Body::from(good.clone()))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Request::post("/v1/requests")
                .header(header::CONTENT_TYPE, "text/csv")
                .header("Idempotency-Key", "has space")
                .body(Body::from(good.clone()))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Request::post("/v1/requests")
                .header(header::CONTENT_TYPE, "multipart/form-data; boundary=X")
                .body(Body::from(
                    "--X\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nhi\r\n--X--\r\n",
                ))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Request::post("/v1/requests")
                .header(header::CONTENT_TYPE, "multipart/form-data; boundary=X")
                .body(Body::from("garbage"))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Request::get("/v1/requests/not-a-uuid")
                .body(Body::empty())
                .unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Request::get("/v1/requests/6d1f0c4e-8f7a-4b8e-9a63-2d8f3b1c0e55")
                .body(Body::empty())
                .unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Request::get("/v1/requests/6d1f0c4e-8f7a-4b8e-9a63-2d8f3b1c0e55/output.csv")
                .body(Body::empty())
                .unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Request::get("/nowhere").body(Body::empty()).unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Request::get("/v1/requests/../etc").body(Body::empty()).unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        // Only outputs are served, and only ones that exist.
        (
            Request::get("/files/imgproc.sqlite")
                .body(Body::empty())
                .unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Request::get("/files/processed/%2e%2e/imgproc.sqlite")
                .body(Body::empty())
                .unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Request::get("/files/processed/6d1f0c4e-8f7a-4b8e-9a63-2d8f3b1c0e55/1/1.jpg")
                .body(Body::empty())
                .unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Request::get("/files/processed").body(Body::empty()).unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Request::delete("/v1/requests").body(Body::empty()).unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
        ),
    ];
    for (request, expected, code) in cases {
        let what = format!("{} {}", request.method(), request.uri());
        let (status, body) = svc.json(request).await;
        assert_eq!(status, expected, "{what}: {body:#}");
        assert_eq!(body["error"]["code"], code, "{what}");
        assert_schema("Error", &body);
    }
    // The invalid CSV lists every problem with its line and column.
    let (_, body) = svc
        .json(
            Request::post("/v1/requests")
                .header(header::CONTENT_TYPE, "text/csv")
                .body(Body::from(
                    "S. No.,Product Name,Input Image Urls\n0,,ftp://x\n",
                ))
                .unwrap(),
        )
        .await;
    let details = body["error"]["details"].as_array().unwrap();
    assert_eq!(details.len(), 3);
    assert!(details.iter().all(|d| d["line"] == 2));
    assert_eq!(details[0]["column"], "S. No.");
    // Nothing of the above was stored or queued.
    assert_eq!(svc.runtime.store.queue_depth().await.unwrap(), 0);
    assert_eq!(srv.total_hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multipart_uploads_carry_the_file_and_the_webhook() {
    let srv = ImageServer::start().await;
    let hook = WebhookReceiver::start(0).await;
    let svc = Service::start(&[]).await;
    let csv = csv_of(&[(1, "A", vec![srv.photo("coffee.jpg")])]);
    let body = format!(
        "--B0undary\r\nContent-Disposition: form-data; name=\"webhook_url\"\r\n\r\n{}\r\n--B0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.csv\"\r\nContent-Type: text/csv\r\n\r\n{csv}\r\n--B0undary--\r\n",
        hook.url()
    );
    let (code, accepted) = svc
        .json(
            Request::post("/v1/requests")
                .header(
                    header::CONTENT_TYPE,
                    "multipart/form-data; boundary=B0undary",
                )
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{accepted:#}");
    let status = svc
        .wait_done(accepted["request_id"].as_str().unwrap())
        .await;
    assert_eq!(status["status"], "completed");
    assert_eq!(status["webhook"]["url"], hook.url());
    assert_eq!(hook.calls().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn output_csv_is_not_ready_until_the_request_is_terminal() {
    let srv = ImageServer::start().await;
    let svc = Service::start(&[]).await;
    let id = svc
        .submit(&csv_of(&[(
            1,
            "Slow",
            vec![srv.url("/slow/1500/coffee.jpg")],
        )]))
        .await["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, body) = svc
        .json(
            Request::get(format!("/v1/requests/{id}/output.csv"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "not_ready");
    let (_, status) = svc.status(&id, "").await;
    assert_eq!(status["status"], "pending");
    assert!(status["output_csv_url"].is_null());
    assert_eq!(status["progress"]["pending"], 1);
    svc.wait_done(&id).await;
    let (code, _, _) = svc
        .call(
            Request::get(format!("/v1/requests/{id}/output.csv"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_input_never_yields_a_server_error() {
    // Accepted bodies point at a closed loopback port: nothing leaves the machine.
    let svc = Service::start(&[("MAX_UPLOAD_BYTES", "20000")]).await;
    let fragments: [&[u8]; 16] = [
        b"S. No.,Product Name,Input Image Urls\n",
        b"1,A,http://127.0.0.1:9/a.jpg\n",
        b"\"",
        b",",
        b"\r\n",
        b"\n\n",
        b"\xEF\xBB\xBF",
        b"\xFF\xFE\x00",
        b"http://[::1",
        b"99999999999999999999999",
        b"\"http://127.0.0.1:9/a.jpg,\nhttp://127.0.0.1:9/b.jpg\"",
        b"\0",
        b"S.No,Name,Urls,S.No\n",
        b"-1,,\n",
        "é😀".as_bytes(),
        b"javascript:alert(1)",
    ];
    // A fixed-seed generator: the same thousand bodies on every run.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let content_types = [
        "text/csv",
        "text/csv; charset=latin1",
        "application/csv",
        "multipart/form-data; boundary=zz",
        "multipart/form-data",
    ];
    for i in 0..1000 {
        let mut body = Vec::new();
        for _ in 0..(next() % 12) {
            body.extend_from_slice(fragments[(next() % fragments.len() as u64) as usize]);
        }
        if next() % 4 == 0 {
            body.extend((0..next() % 64).map(|_| next() as u8));
        }
        let ct = content_types[(next() % content_types.len() as u64) as usize];
        let mut uri = "/v1/requests".to_owned();
        if next() % 5 == 0 {
            uri.push_str("?webhook_url=%ZZ%00");
        }
        let request = Request::post(&uri)
            .header(header::CONTENT_TYPE, ct)
            .body(Body::from(body.clone()))
            .unwrap();
        let (status, headers, answer) = svc.call(request).await;
        assert!(
            status.is_client_error() || status == StatusCode::ACCEPTED,
            "case {i}: {status} for {body:?}"
        );
        if status.is_client_error() {
            let json: Value = serde_json::from_slice(&answer)
                .unwrap_or_else(|_| panic!("case {i}: error body is JSON ({headers:?})"));
            assert_schema("Error", &json);
        }
    }
}

/// The bytes a JSON document takes inside a Lambda response, where it
/// travels as a string: every `"` and `\` gains a backslash.
fn wire_len(json: &[u8]) -> usize {
    json.len() + json.iter().filter(|&&b| b == b'"' || b == b'\\').count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_pages_are_bounded_by_bytes_as_well_as_products() {
    use imgproc::api::views::product_wire_len;
    use imgproc::services::status::{self, PAGE_BUDGET_BYTES, PageBounds, RESPONSE_LIMIT_BYTES};

    // 60 products of 50 images whose URLs run to ~1,950 characters: about
    // 6 MB of URLs, so even a page of 1,000 products must stop early.
    let srv = ImageServer::start().await;
    let svc = Service::start(&[("MAX_UPLOAD_BYTES", "16000000")]).await;
    let pad = "p".repeat(1900);
    let rows: Vec<(u64, &str, Vec<String>)> = (1..=60)
        .map(|n| {
            let urls = (1..=50)
                .map(|i| srv.url(&format!("/status/404?{pad}&n={n}&i={i}")))
                .collect();
            (n, "Long", urls)
        })
        .collect();
    let id = svc.submit(&csv_of(&rows)).await["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    svc.wait_done(&id).await;

    let mut serials = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("?limit=1000&cursor={c}"),
            None => "?limit=1000".to_owned(),
        };
        let (code, _, body) = svc
            .call(
                Request::get(format!("/v1/requests/{id}{query}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(code, StatusCode::OK);
        assert!(
            wire_len(&body) <= RESPONSE_LIMIT_BYTES,
            "{} bytes",
            body.len()
        );
        let page: Value = serde_json::from_slice(&body).unwrap();
        assert_schema("RequestStatus", &page);
        let products = page["products"].as_array().unwrap();
        let products_wire: usize = products
            .iter()
            .map(|p| wire_len(&serde_json::to_vec(p).unwrap()) + 1)
            .sum();
        assert!(
            products_wire <= PAGE_BUDGET_BYTES,
            "page {pages}: {products_wire} bytes of products"
        );
        serials.extend(
            products
                .iter()
                .map(|p| p["serial_number"].as_u64().unwrap()),
        );
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert!(pages >= 2, "the byte budget split the request");
    assert_eq!(
        serials,
        (1..=60).collect::<Vec<u64>>(),
        "each product once, in order"
    );

    // A product bigger than the budget by itself is still answered, alone.
    let app = &svc.runtime.app;
    let tiny = PageBounds {
        limit: 1000,
        budget: 1,
        measure: product_wire_len,
    };
    let id = id.parse().unwrap();
    let mut cursor: Option<String> = None;
    for expected in 1..=60u64 {
        let page = status::status(app, None, id, tiny, cursor.as_deref())
            .await
            .unwrap();
        assert_eq!(page.products.len(), 1);
        assert_eq!(page.products[0].0.serial_number, expected);
        cursor = page.next_cursor;
        assert_eq!(cursor.is_none(), expected == 60);
    }
}
