//! `process`: one CSV end to end through the same HTTP API, with a progress
//! bar, the output CSV and images written into one folder.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, header};
use clap::Args;
use imgproc::config::Config;
use imgproc::local::runtime::file_router;
use imgproc::local::{LocalRuntime, LocalRuntimeOptions};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tower::ServiceExt;

/// Exit codes, so scripts can tell the outcomes apart.
pub const EXIT_COMPLETED: u8 = 0;
pub const EXIT_INVALID_CSV: u8 = 3;
pub const EXIT_COMPLETED_WITH_ERRORS: u8 = 4;
pub const EXIT_FAILED: u8 = 5;

#[derive(Args)]
pub struct ProcessArgs {
    /// The CSV of products (S. No., Product Name, Input Image Urls).
    csv: PathBuf,
    /// Folder for output.csv and the compressed images (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Serve this folder over HTTP on --serve-addr while processing, for CSVs
    /// whose images are local files (the bundled example).
    #[arg(long)]
    serve: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:8765")]
    serve_addr: SocketAddr,
    /// Webhook to call when the request is done.
    #[arg(long)]
    webhook_url: Option<String>,
    /// JPEG quality, 1–100 (default: JPEG_QUALITY or 50).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=100))]
    quality: Option<u8>,
    /// Images processed at once (default: 4 per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
}

pub async fn run(args: ProcessArgs) -> anyhow::Result<ExitCode> {
    let mut config = Config::from_env()?;
    if let Some(q) = args.quality {
        config.jpeg_quality = q;
    }
    // The command is one client of its own in-process server.
    let token = config.clients.first().map(|c| c.token.expose().to_owned());
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let out = args
        .out
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", args.out.display()))?;
    if config.output_base_url.is_none() {
        // Output URLs point at the files written into the output folder.
        let base = url::Url::from_directory_path(&out)
            .map_err(|()| anyhow::anyhow!("{} is not an absolute path", out.display()))?;
        config.output_base_url = Some(base.to_string());
    }
    let csv =
        std::fs::read(&args.csv).with_context(|| format!("cannot read {}", args.csv.display()))?;

    let mut options = LocalRuntimeOptions::new(out.join(".imgproc"), "");
    options.objects_dir = Some(out.clone());
    if let Some(w) = args.workers {
        options.workers = w.max(1);
    }
    let image_server = match &args.serve {
        Some(dir) => {
            let listener = tokio::net::TcpListener::bind(args.serve_addr)
                .await
                .with_context(|| {
                    format!(
                        "cannot serve {} on {} (use --serve-addr)",
                        dir.display(),
                        args.serve_addr
                    )
                })?;
            options.net_exempt.push(args.serve_addr);
            let app = file_router(dir.clone());
            Some(tokio::spawn(
                async move { axum::serve(listener, app).await },
            ))
        }
        None => None,
    };
    let runtime = LocalRuntime::start(config, options)
        .await
        .map_err(anyhow::Error::msg)?;
    let router = runtime.router();
    let code = drive(&router, token.as_deref(), &args, &csv, &out).await;
    runtime.shutdown().await;
    if let Some(server) = image_server {
        server.abort();
    }
    code
}

async fn call(
    router: &Router,
    token: Option<&str>,
    mut request: Request<Body>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    if let Some(t) = token {
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, format!("Bearer {t}").parse()?);
    }
    let response = router.clone().oneshot(request).await?;
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
    Ok((status, body))
}

async fn get_json(router: &Router, token: Option<&str>, uri: &str) -> anyhow::Result<Value> {
    let (status, body) = call(router, token, Request::get(uri).body(Body::empty())?).await?;
    if status != StatusCode::OK {
        bail!("GET {uri}: {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(serde_json::from_slice(&body)?)
}

async fn drive(
    router: &Router,
    token: Option<&str>,
    args: &ProcessArgs,
    csv: &[u8],
    out: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    // The same CSV and webhook give the same request: running the command
    // again after an interruption resumes that request instead of starting over.
    let mut h = Sha256::new();
    h.update(csv);
    h.update(args.webhook_url.as_deref().unwrap_or("").as_bytes());
    let key = format!("process-{}", hex::encode(h.finalize()));
    let mut uri = "/v1/requests".to_owned();
    if let Some(w) = &args.webhook_url {
        uri.push_str(&format!(
            "?webhook_url={}",
            url::form_urlencoded::byte_serialize(w.as_bytes()).collect::<String>()
        ));
    }
    let request = Request::post(&uri)
        .header(header::CONTENT_TYPE, "text/csv")
        .header("idempotency-key", key)
        .body(Body::from(csv.to_vec()))?;
    let (status, body) = call(router, token, request).await?;
    let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if status != StatusCode::ACCEPTED {
        let error = &answer["error"];
        eprintln!(
            "{}: {}",
            args.csv.display(),
            error["message"].as_str().unwrap_or("rejected")
        );
        for d in error["details"].as_array().into_iter().flatten() {
            let at = match (d["line"].as_u64(), d["column"].as_str()) {
                (Some(l), Some(c)) => format!("line {l}, {c}: "),
                (Some(l), None) => format!("line {l}: "),
                _ => String::new(),
            };
            eprintln!("  {at}{}", d["message"].as_str().unwrap_or(""));
        }
        return Ok(ExitCode::from(if error["code"] == "invalid_csv" {
            EXIT_INVALID_CSV
        } else {
            1
        }));
    }
    for w in answer["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", w.as_str().unwrap_or(""));
    }
    let id = answer["request_id"].as_str().unwrap_or_default().to_owned();
    let total = answer["images"].as_u64().unwrap_or(0);

    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout);
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} images {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let status = loop {
        let s = get_json(router, token, &format!("/v1/requests/{id}?limit=1")).await?;
        let p = &s["progress"];
        bar.set_position(p["succeeded"].as_u64().unwrap_or(0) + p["failed"].as_u64().unwrap_or(0));
        bar.set_message(format!("({} failed)", p["failed"].as_u64().unwrap_or(0)));
        let terminal = matches!(
            s["status"].as_str(),
            Some("completed" | "completed_with_errors" | "failed")
        );
        // The webhook's retries can span a day: wait for its first attempt
        // only. Later ones stay in the outbox and run on the next start.
        let webhook_waiting = s["webhook"]["status"].as_str() == Some("pending")
            && s["webhook"]["attempts"].as_u64() == Some(0);
        if terminal && !webhook_waiting {
            break s;
        }
        if Instant::now() > deadline {
            bar.abandon();
            bail!(
                "request {id} did not finish within {} s; run the same command again to resume",
                args.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    bar.finish_and_clear();

    let (code, csv_body) = call(
        router,
        token,
        Request::get(format!("/v1/requests/{id}/output.csv")).body(Body::empty())?,
    )
    .await?;
    if code != StatusCode::OK {
        bail!("output CSV: {code}");
    }
    let output_csv = out.join("output.csv");
    std::fs::write(&output_csv, &csv_body)
        .with_context(|| format!("cannot write {}", output_csv.display()))?;

    // Totals and failures, page by page.
    let (mut bytes_in, mut bytes_out) = (0u64, 0u64);
    let mut failures = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let uri = match &cursor {
            Some(c) => format!("/v1/requests/{id}?limit=1000&cursor={c}"),
            None => format!("/v1/requests/{id}?limit=1000"),
        };
        let page = get_json(router, token, &uri).await?;
        for product in page["products"].as_array().into_iter().flatten() {
            for image in product["images"].as_array().into_iter().flatten() {
                if image["status"] == "succeeded" {
                    bytes_in += image["input_bytes"].as_u64().unwrap_or(0);
                    bytes_out += image["output_bytes"].as_u64().unwrap_or(0);
                } else {
                    failures.push(format!(
                        "  S. No. {}: {} — {} ({})",
                        product["serial_number"],
                        image["input_url"].as_str().unwrap_or(""),
                        image["error"]["message"].as_str().unwrap_or(""),
                        image["error"]["code"].as_str().unwrap_or("")
                    ));
                }
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }

    let p = &status["progress"];
    let state = status["status"].as_str().unwrap_or("");
    println!(
        "Request {id} {}: {} images, {} succeeded, {} failed, in {:.1} s.",
        state.replace('_', " "),
        p["total"],
        p["succeeded"],
        p["failed"],
        started.elapsed().as_secs_f64()
    );
    if bytes_in > 0 {
        println!(
            "Compressed {:.2} MB into {:.2} MB ({:.1}% smaller).",
            bytes_in as f64 / 1e6,
            bytes_out as f64 / 1e6,
            100.0 * (1.0 - bytes_out as f64 / bytes_in as f64)
        );
    }
    if !failures.is_empty() {
        println!("Failed images:");
        for f in failures.iter().take(20) {
            println!("{f}");
        }
        if failures.len() > 20 {
            println!("  … and {} more (see the status API)", failures.len() - 20);
        }
    }
    if let Some(w) = status["webhook"].as_object() {
        let state = w["status"].as_str().unwrap_or("");
        println!("Webhook: {state} after {} attempt(s).", w["attempts"]);
        if state == "pending" {
            println!(
                "  Its next attempts run whenever a command uses {} again.",
                out.join(".imgproc").display()
            );
        }
    }
    println!("Output CSV: {}", output_csv.display());
    println!("Images:     {}", out.join("processed").join(&id).display());
    Ok(ExitCode::from(match state {
        "completed" => EXIT_COMPLETED,
        "completed_with_errors" => EXIT_COMPLETED_WITH_ERRORS,
        _ => EXIT_FAILED,
    }))
}
