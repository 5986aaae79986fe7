//! The network guard with its default setting (on): private addresses in
//! every spelling, names that resolve to them, and redirects to them are
//! refused — and a listener proves no connection was ever made.

mod common;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::service::Service;
use common::{ImageServer, WebhookReceiver, csv_of};
use imgproc::net::NameLookup;

/// Resolves every name to loopback, like a hostile DNS record would.
struct ToLoopback;

impl NameLookup for ToLoopback {
    fn lookup(&self, _host: String) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> {
        Box::pin(async { Ok(vec!["127.0.0.1".parse().unwrap()]) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn private_targets_are_refused_without_connecting() {
    let target = ImageServer::start().await;
    let redirector = ImageServer::start().await;
    let hook = WebhookReceiver::start(0).await;
    let port = target.addr.port();
    let redirector_addr = redirector.addr;
    let svc = Service::start_with(&[("ALLOW_PRIVATE_NETWORKS", "false")], move |o| {
        o.lookup = Some(Arc::new(ToLoopback));
        // Stands in for a public server: only it is let through.
        o.net_exempt.push(redirector_addr);
    })
    .await;

    let spellings = [
        format!("http://127.0.0.1:{port}/photos/coffee.jpg"),
        format!("http://127.1:{port}/photos/coffee.jpg"),
        format!("http://2130706433:{port}/photos/coffee.jpg"),
        format!("http://0x7f000001:{port}/photos/coffee.jpg"),
        format!("http://0177.0.0.1:{port}/photos/coffee.jpg"),
        format!("http://0.0.0.0:{port}/photos/coffee.jpg"),
        format!("http://[::1]:{port}/photos/coffee.jpg"),
        format!("http://[::ffff:127.0.0.1]:{port}/photos/coffee.jpg"),
        format!("http://localhost:{port}/photos/coffee.jpg"),
        format!("http://images.example.com:{port}/photos/coffee.jpg"),
        format!("http://cdn.example.com@127.0.0.1:{port}/photos/coffee.jpg"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/a.jpg".to_owned(),
        "http://172.16.0.1/a.jpg".to_owned(),
        "http://192.168.0.1/a.jpg".to_owned(),
        "http://100.64.0.1/a.jpg".to_owned(),
        "http://[fd00::1]/a.jpg".to_owned(),
        "http://[fe80::1]/a.jpg".to_owned(),
        redirector.url(&format!("/redirect?to=http://127.0.0.1:{port}/photos/coffee.jpg")),
        redirector.url(&format!("/redirect?to=http://images.example.com:{port}/photos/coffee.jpg")),
    ];
    let rows: Vec<(u64, &str, Vec<String>)> = spellings.iter().enumerate().map(|(i, u)| (i as u64 + 1, "P", vec![u.clone()])).collect();
    let webhook_by_name = format!("http://hooks.example.com:{}/hook", hook.addr.port());
    let id = svc.submit_with_webhook(&webhook_by_name, &csv_of(&rows)).await;
    let status = svc.wait_done(&id).await;
    assert_eq!(status["status"], "failed");
    for (i, product) in status["products"].as_array().unwrap().iter().enumerate() {
        let image = &product["images"][0];
        assert_eq!(image["error"]["code"], "blocked_address", "{}: {image:#}", spellings[i]);
    }
    assert_eq!(target.total_hits(), 0, "no connection ever reached the private listener");
    assert_eq!(redirector.hits("/redirect"), 2, "the allowed hop was made, the private one refused");
    assert_eq!(status["webhook"]["status"], "failed", "the webhook's name resolves to loopback");
    assert!(hook.calls().is_empty(), "no connection reached the webhook receiver");

    // A literal private webhook address is refused at upload.
    let (code, body) = svc
        .json(
            Request::post(format!("/v1/requests?webhook_url=http://127.0.0.1:{}/hook", hook.addr.port()))
                .header(header::CONTENT_TYPE, "text/csv")
                .body(Body::from(csv_of(&rows[..1])))
                .unwrap(),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_request");
}
