use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use imgproc::compress::{Settings, available_cores, compress};

#[derive(Args)]
pub struct CompressArgs {
    /// Image files (JPEG, PNG, WebP, GIF).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Folder for the compressed JPEGs (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// JPEG quality, 1–100.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(1..=100))]
    quality: u8,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Largest image accepted, in pixels.
    #[arg(long, default_value_t = 100_000_000)]
    max_pixels: u64,
}

struct Row {
    file: PathBuf,
    input: u64,
    result: Result<(u64, u32, u32, bool), String>,
}

pub fn run(args: CompressArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let settings = Settings { quality: args.quality, max_pixels: args.max_pixels };
    let threads = args.threads.unwrap_or_else(available_cores).max(1);
    let next = AtomicUsize::new(0);
    let rows = Mutex::new(Vec::with_capacity(args.files.len()));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads.min(args.files.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(file) = args.files.get(i) else { break };
                    let row = compress_one(file, &args.out, &settings);
                    rows.lock().unwrap_or_else(|p| p.into_inner()).push((i, row));
                }
            });
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut rows = rows.into_inner().unwrap_or_else(|p| p.into_inner());
    rows.sort_by_key(|(i, _)| *i);

    let (mut bytes_in, mut bytes_out, mut failed) = (0u64, 0u64, 0usize);
    for (_, row) in &rows {
        match &row.result {
            Ok((out, w, h, kept)) => {
                bytes_in += row.input;
                bytes_out += out;
                println!(
                    "{}\t{}x{}\t{} -> {} bytes{}",
                    row.file.display(),
                    w,
                    h,
                    row.input,
                    out,
                    if *kept { "\t(original kept)" } else { "" }
                );
            }
            Err(e) => {
                failed += 1;
                println!("{}\tFAILED\t{e}", row.file.display());
            }
        }
    }
    let ok = rows.len() - failed;
    println!(
        "{ok} compressed, {failed} failed, {threads} thread(s), {elapsed:.3} s, {:.2} images/s, {bytes_in} -> {bytes_out} bytes ({:.1}% smaller)",
        ok as f64 / elapsed.max(1e-9),
        if bytes_in > 0 { 100.0 * (1.0 - bytes_out as f64 / bytes_in as f64) } else { 0.0 }
    );
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(4) })
}

fn compress_one(file: &Path, out_dir: &Path, settings: &Settings) -> Row {
    let input = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => return Row { file: file.to_path_buf(), input: 0, result: Err(e.to_string()) },
    };
    let result = compress(&input, settings).map_err(|e| e.to_string()).and_then(|c| {
        let stem = file.file_stem().map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
        let target = out_dir.join(format!("{stem}.jpg"));
        std::fs::write(&target, &c.bytes).map_err(|e| format!("{}: {e}", target.display()))?;
        Ok((c.bytes.len() as u64, c.width, c.height, c.original_kept))
    });
    Row { file: file.to_path_buf(), input: input.len() as u64, result }
}
