//! `imgproc-local`: the whole service in one process, on SQLite and the
//! filesystem. Same code as the Lambda functions; no AWS account needed.

mod compress_cmd;
mod process_cmd;
mod serve_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "imgproc-local",
    version = version(),
    about = "Bulk image compression from a CSV of products, on one machine"
)]
struct Cli {
    /// Log lines as JSON (one object per line) instead of text.
    #[arg(long, global = true, env = "IMGPROC_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API with its workers and notifier.
    Serve(serve_cmd::ServeArgs),
    /// Process one CSV end to end and write the results into a folder.
    Process(process_cmd::ProcessArgs),
    /// Compress local image files with the service's engine.
    Compress(compress_cmd::CompressArgs),
}

/// The version, and whether the image engine has its SIMD code: a build
/// without it works but is several times slower.
fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        format!(
            "{} ({})",
            env!("CARGO_PKG_VERSION"),
            imgproc::compress::build_info()
        )
    })
}

fn init_tracing(json: bool, default_level: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    if json {
        // The same JSON lines as the Lambda functions write, on stderr.
        tracing_subscriber::registry()
            .with(imgproc::logging::filter(default_level))
            .with(imgproc::logging::json_layer(std::io::stderr, true))
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(imgproc::logging::filter(default_level))
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve(_) => "info,tower_http=warn",
        _ => "warn",
    };
    init_tracing(cli.log_json, default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve_cmd::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Process(args) => process_cmd::run(args).await,
            Command::Compress(args) => compress_cmd::run(args),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
