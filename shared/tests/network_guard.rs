//! The network guard with its default setting (on): private addresses in
//! every spelling, names that resolve to them, redirects to them and
//! `user@host` tricks are refused — for image URLs and webhook URLs — and
//! listeners on the IPv4 and IPv6 loopback prove no connection was ever made.

mod common;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::service::Service;
use common::{ImageServer, Tripwire, csv_of};
use imgproc::net::NameLookup;

/// Resolves every name to both loopback addresses, like a hostile DNS
/// record would (the guard's test resolver hook).
struct ToLoopback;

impl NameLookup for ToLoopback {
    fn lookup(
        &self,
        _host: String,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> {
        Box::pin(async { Ok(vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()]) })
    }
}

/// Listeners on 127.0.0.1:P and, when the machine has it, [::1]:P — the
/// same port, so every spelling of "this host, port P" lands on one of them.
struct Tripwires {
    port: u16,
    wires: Vec<Tripwire>,
}

impl Tripwires {
    async fn start() -> Self {
        let v4 = Tripwire::bind("127.0.0.1", 0)
            .await
            .expect("bind the IPv4 loopback");
        let port = v4.addr.port();
        let mut wires = vec![v4];
        match Tripwire::bind("::1", port).await {
            Some(v6) => wires.push(v6),
            None => eprintln!("no IPv6 loopback here: [::1] spellings are checked on IPv4 only"),
        }
        for w in &wires {
            w.self_test().await;
        }
        Self { port, wires }
    }

    fn connections(&self) -> u32 {
        self.wires.iter().map(Tripwire::connections).sum()
    }
}

/// Every literal spelling of a private or special address, with port `p`
/// where a listener can stand behind it.
fn literal_spellings(p: u16, path: &str) -> Vec<String> {
    let mut urls: Vec<String> = [
        "127.0.0.1",
        "127.1",
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "127.000.000.001",
        "0.0.0.0",
        "0",
        "[::1]",
        "[::]",
        "[::ffff:127.0.0.1]",
        "[0:0:0:0:0:ffff:7f00:1]",
        "[::127.0.0.1]",
    ]
    .iter()
    .map(|h| format!("http://{h}:{p}{path}"))
    .collect();
    urls.extend(
        [
            "169.254.169.254",
            "10.0.0.1",
            "10.255.255.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "[fd00::1]",
            "[fe80::1]",
            "[::ffff:169.254.169.254]",
            "224.0.0.1",
        ]
        .iter()
        .map(|h| format!("http://{h}{path}")),
    );
    // `user@host`: the part before `@` is a user name, not the host.
    urls.extend([
        format!("http://cdn.example.com@127.0.0.1:{p}{path}"),
        format!("http://user:secret@[::1]:{p}{path}"),
        format!("https://cdn.example.com:443@10.0.0.1{path}"),
        // A backslash ends the authority in http(s) URLs: the host is the loopback.
        format!("http://127.0.0.1:{p}\\@cdn.example.com{path}"),
    ]);
    urls
}

/// Names: each resolves (through the test resolver) to the loopback.
fn name_spellings(p: u16, path: &str) -> Vec<String> {
    vec![
        format!("http://localhost:{p}{path}"),
        format!("http://LOCALHOST.:{p}{path}"),
        format!("http://images.example.com:{p}{path}"),
        format!("https://127.0.0.1.nip.io:{p}{path}"),
        format!("http://127.0.0.1@images.example.com:{p}{path}"),
        format!("http://images.example.com:{p}#@8.8.8.8{path}"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn image_urls_to_private_addresses_fail_as_blocked_without_connecting() {
    let wires = Tripwires::start().await;
    let redirector = ImageServer::start().await;
    let redirector_addr = redirector.addr;
    let svc = Service::start_with(&[("ALLOW_PRIVATE_NETWORKS", "false")], move |o| {
        o.lookup = Some(Arc::new(ToLoopback));
        // Stands in for a public server: only it is let through.
        o.net_exempt.push(redirector_addr);
    })
    .await;
    let baseline = wires.connections();
    let p = wires.port;

    let mut urls = literal_spellings(p, "/a.jpg");
    urls.extend(name_spellings(p, "/a.jpg"));
    // A public-looking server that redirects to the loopback, in several spellings.
    let redirects = [
        format!("http://127.0.0.1:{p}/a.jpg"),
        format!("http://[::1]:{p}/a.jpg"),
        format!("http://2130706433:{p}/a.jpg"),
        format!("http://images.example.com:{p}/a.jpg"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ];
    for to in &redirects {
        urls.push(redirector.url(&format!(
            "/redirect?to={}",
            url::form_urlencoded::byte_serialize(to.as_bytes()).collect::<String>()
        )));
    }

    let rows: Vec<(u64, &str, Vec<String>)> = urls
        .iter()
        .enumerate()
        .map(|(i, u)| (i as u64 + 1, "P", vec![u.clone()]))
        .collect();
    let accepted = svc.submit(&csv_of(&rows)).await;
    assert_eq!(
        accepted["images"].as_u64(),
        Some(urls.len() as u64),
        "every spelling is a valid URL: {accepted:#}"
    );
    let status = svc
        .wait_done(accepted["request_id"].as_str().unwrap())
        .await;
    assert_eq!(status["status"], "failed");
    assert_eq!(
        status["progress"]["failed"].as_u64(),
        Some(urls.len() as u64)
    );
    for (i, product) in status["products"].as_array().unwrap().iter().enumerate() {
        let image = &product["images"][0];
        assert_eq!(
            image["error"]["code"], "blocked_address",
            "{}: {image:#}",
            urls[i]
        );
    }
    assert_eq!(
        wires.connections(),
        baseline,
        "no connection ever reached a loopback listener"
    );
    assert_eq!(
        redirector.hits("/redirect"),
        redirects.len() as u32,
        "the allowed hop was made, the private one refused"
    );
    eprintln!(
        "{} image URLs refused as blocked_address, 0 connections to the loopback",
        urls.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_urls_to_private_addresses_are_refused_without_connecting() {
    let wires = Tripwires::start().await;
    let svc = Service::start_with(
        &[
            ("ALLOW_PRIVATE_NETWORKS", "false"),
            ("WEBHOOK_MAX_ATTEMPTS", "2"),
        ],
        |o| {
            o.lookup = Some(Arc::new(ToLoopback));
        },
    )
    .await;
    let baseline = wires.connections();
    let p = wires.port;
    // The one image fails at once (a literal private address): the request
    // becomes terminal quickly and its webhook is due.
    let csv = csv_of(&[(1, "P", vec!["http://10.0.0.1/a.jpg".to_owned()])]);

    // A literal private address is refused at upload, as a query parameter
    // and as a form field, and nothing is stored.
    let literals = literal_spellings(p, "/hook");
    for hook in &literals {
        let encoded: String = url::form_urlencoded::byte_serialize(hook.as_bytes()).collect();
        let (code, body) = svc
            .json(
                Request::post(format!("/v1/requests?webhook_url={encoded}"))
                    .header(header::CONTENT_TYPE, "text/csv")
                    .body(Body::from(csv.clone()))
                    .unwrap(),
            )
            .await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{hook}: {body:#}");
        assert_eq!(body["error"]["code"], "invalid_request", "{hook}");

        let form = format!(
            "--b\r\nContent-Disposition: form-data; name=\"webhook_url\"\r\n\r\n{hook}\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.csv\"\r\n\r\n{csv}\r\n--b--\r\n"
        );
        let (code, body) = svc
            .json(
                Request::post("/v1/requests")
                    .header(header::CONTENT_TYPE, "multipart/form-data; boundary=b")
                    .body(Body::from(form))
                    .unwrap(),
            )
            .await;
        assert_eq!(
            code,
            StatusCode::BAD_REQUEST,
            "{hook} (form field): {body:#}"
        );
    }
    assert_eq!(
        svc.runtime.store.queue_depth().await.unwrap(),
        0,
        "a refused upload queues nothing"
    );

    // A name is accepted (it is checked where it is resolved) and every
    // delivery to it is refused: the webhook fails after its attempts.
    let names = name_spellings(p, "/hook");
    let mut ids = Vec::new();
    for hook in &names {
        ids.push((hook, svc.submit_with_webhook(hook, &csv).await));
    }
    for (hook, id) in ids {
        let status = svc.wait_done(&id).await;
        assert_eq!(
            status["webhook"]["status"], "failed",
            "{hook}: {:#}",
            status["webhook"]
        );
        assert_eq!(status["webhook"]["attempts"], 2, "{hook}");
    }
    assert_eq!(
        wires.connections(),
        baseline,
        "no webhook connection ever reached a loopback listener"
    );
    eprintln!(
        "{} literal webhook URLs refused at upload (x2 forms), {} names refused at delivery, 0 connections",
        literals.len(),
        names.len()
    );
}
