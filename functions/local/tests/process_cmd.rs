//! `imgproc-local process` and `compress` as a user runs them: outputs on
//! disk, a summary, and exit codes that tell the outcomes apart.

#[path = "../../../shared/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{ImageServer, csv_of, photos_dir};

fn run(args: &[&str], dir: &Path) -> Output {
    run_with(args, dir, &[])
}

/// `run` with more environment variables set.
fn run_with(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imgproc-local"))
        .args(args)
        .current_dir(dir)
        .env("ALLOW_PRIVATE_NETWORKS", "true")
        .env("RETRY_BASE_DELAY_MS", "20")
        .envs(env.iter().copied())
        .output()
        .expect("imgproc-local runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_writes_the_output_csv_and_images_and_reports_by_exit_code() {
    let srv = ImageServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ok.csv"),
        csv_of(&[(
            1,
            "A",
            vec![srv.photo("coffee.jpg"), srv.photo("rocket-launch.gif")],
        )]),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("partial.csv"),
        csv_of(&[(
            1,
            "A",
            vec![srv.photo("coffee.jpg"), srv.url("/status/404")],
        )]),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bad.csv"),
        "S. No.,Product Name,Input Image Urls\nx,A,https://e.com/a.jpg\n",
    )
    .unwrap();

    let ok = run(&["process", "ok.csv", "--out", "out"], dir.path());
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("2 succeeded, 0 failed"), "{stdout}");
    let csv = std::fs::read_to_string(dir.path().join("out/output.csv")).unwrap();
    let row = csv.lines().nth(1).unwrap();
    let outputs: Vec<&str> = row
        .rsplit_once(",\"")
        .unwrap()
        .1
        .trim_end_matches('"')
        .split(',')
        .collect();
    assert_eq!(outputs.len(), 2);
    for url in outputs {
        let path = url::Url::parse(url).unwrap().to_file_path().unwrap();
        assert_eq!(
            &std::fs::read(&path).unwrap()[..3],
            &[0xFF, 0xD8, 0xFF],
            "{url}"
        );
    }

    let again = run(&["process", "ok.csv", "--out", "out"], dir.path());
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(
        srv.hits("/photos/coffee.jpg"),
        1,
        "running again returns the same request"
    );

    let partial = run(&["process", "partial.csv", "--out", "out2"], dir.path());
    assert_eq!(
        partial.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&partial.stdout)
    );
    assert!(String::from_utf8_lossy(&partial.stdout).contains("HTTP 404"));

    let bad = run(&["process", "bad.csv", "--out", "out3"], dir.path());
    assert_eq!(bad.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("line 2, S. No.:"), "{stderr}");
}

#[test]
fn compress_converts_local_files() {
    let dir = tempfile::tempdir().unwrap();
    let photos = photos_dir();
    let files: Vec<String> = ["coffee.jpg", "chelsea-cat.png", "paint-brushes.webp"]
        .iter()
        .map(|f| photos.join(f).display().to_string())
        .collect();
    let mut args = vec!["compress", "--out", "o", "--threads", "2"];
    args.extend(files.iter().map(String::as_str));
    let out = run(&args, dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("3 compressed, 0 failed"), "{stdout}");
    for name in ["coffee.jpg", "chelsea-cat.jpg", "paint-brushes.jpg"] {
        assert_eq!(
            &std::fs::read(dir.path().join("o").join(name)).unwrap()[..2],
            &[0xFF, 0xD8]
        );
    }
}

#[test]
fn compress_takes_the_rate_distortion_lambda() {
    let dir = tempfile::tempdir().unwrap();
    let photo = photos_dir().join("coffee.jpg").display().to_string();
    // λ from the flag, or from JPEG_RDO_LAMBDA as `serve` reads it.
    let size_with = |lambda: &str, from_env: bool| {
        let out_dir = format!("o{lambda}{}", if from_env { "env" } else { "" });
        let mut args = vec!["compress", "--out", &out_dir, &photo];
        let mut env = vec![];
        if from_env {
            env.push(("JPEG_RDO_LAMBDA", lambda));
        } else {
            args.extend(["--rdo-lambda", lambda]);
        }
        let out = run_with(&args, dir.path(), &env);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::metadata(dir.path().join(out_dir).join("coffee.jpg"))
            .unwrap()
            .len()
    };
    let size = |lambda: &str| size_with(lambda, false);
    let (plain, default, smaller) = (size("0"), size("5"), size("30"));
    assert!(
        plain > default && default > smaller,
        "bytes at λ 0, 5, 30: {plain}, {default}, {smaller}"
    );
    assert_eq!(size_with("30", true), smaller, "JPEG_RDO_LAMBDA=30");
    assert_eq!(size_with("0", true), plain, "JPEG_RDO_LAMBDA=0");

    let refused = run(
        &["compress", "--out", "o", "--rdo-lambda", "101", &photo],
        dir.path(),
    );
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--rdo-lambda"), "{stderr}");
    assert!(
        !dir.path().join("o").exists(),
        "nothing written when refused"
    );
    let refused = run_with(
        &["compress", "--out", "o", &photo],
        dir.path(),
        &[("JPEG_RDO_LAMBDA", "101")],
    );
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--rdo-lambda"), "{stderr}");
    assert!(!dir.path().join("o").exists());
}

#[test]
fn version_says_whether_the_engine_has_simd() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["--version"], dir.path());
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("imgproc-local {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    // A build needs nasm on x86-64 unless IMGPROC_ALLOW_NO_SIMD=1 lets it go
    // without; either way the line says which it is.
    let allowed_without = option_env!("IMGPROC_ALLOW_NO_SIMD") == Some("1");
    assert!(
        text.contains("SIMD on") || (allowed_without && text.contains("SIMD off")),
        "{text}"
    );
}
