use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use imgproc::config::Config;
use imgproc::local::{LocalRuntime, LocalRuntimeOptions};

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "IMGPROC_ADDR", default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// Folder for the database and stored objects.
    #[arg(long, env = "IMGPROC_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Base URL clients use to reach this server (for output URLs under
    /// /files); defaults to PUBLIC_URL, else http://<addr>.
    #[arg(long, env = "IMGPROC_PUBLIC_URL")]
    public_url: Option<String>,
    /// Images processed at once (default: 4 per core; compression itself
    /// uses one thread per core).
    #[arg(long, env = "IMGPROC_WORKERS")]
    workers: Option<usize>,
    /// Threads compressing images (default: one per core).
    #[arg(long, env = "IMGPROC_THREADS")]
    threads: Option<usize>,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::from_env()?;
    let public = match args.public_url {
        // The flag is the more specific setting: it wins over PUBLIC_URL.
        Some(flag) => {
            config.public_url = None;
            flag
        }
        None => config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", args.addr)),
    };
    let mut options = LocalRuntimeOptions::new(
        &args.data_dir,
        format!("{}/files/", public.trim_end_matches('/')),
    );
    if let Some(w) = args.workers {
        options.workers = w.max(1);
    }
    if let Some(t) = args.threads {
        options.cpu_threads = t.max(1);
    }
    let runtime = LocalRuntime::start(config, options)
        .await
        .map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    tracing::info!(addr = %args.addr, data_dir = %args.data_dir.display(), "imgproc-local serving");
    axum::serve(listener, runtime.router())
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    runtime.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}
