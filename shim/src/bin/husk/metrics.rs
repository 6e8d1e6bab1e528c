//! `husk metrics` prints the node's Prometheus exposition once: every
//! running pod's metrics, read from its shim's socket, and the node's
//! (husk_shim::telemetry). `husk serve-metrics --listen ADDR` serves the
//! same on `GET /metrics` over HTTP, for Prometheus to scrape, reading the
//! shims afresh on every request.

use crate::args::{self, Args, UsageError};
use anyhow::Context;
use husk_shim::telemetry::{http, scrape};
use std::path::PathBuf;
use std::time::Duration;

/// How long one pod's shim has to answer.
const POD_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a whole HTTP request may take (many pods, each bounded).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

fn runtime_dir(args: &mut Args) -> anyhow::Result<PathBuf> {
    let source = args::config_source(args)?;
    Ok(args::load(&source)?.hypervisor.runtime_dir)
}

pub fn run(mut args: Args) -> anyhow::Result<i32> {
    let dir = runtime_dir(&mut args)?;
    args.finish()?;
    let s = args::runtime()?.block_on(scrape::scrape(&dir, POD_TIMEOUT));
    for (pod, why) in &s.unreachable {
        eprintln!("husk metrics: pod {pod}: {why}");
    }
    print!("{}", s.exposition.render());
    Ok(0)
}

pub fn serve(mut args: Args) -> anyhow::Result<i32> {
    let listen = args.value("--listen")?.ok_or_else(|| {
        UsageError("serve-metrics needs --listen ADDR (e.g. 127.0.0.1:9464)".into())
    })?;
    let dir = runtime_dir(&mut args)?;
    args.finish()?;
    args::runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        tracing::info!(listen = %listener.local_addr()?, runtime_dir = %dir.display(), "serving metrics on /metrics");
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%e, "accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let dir = dir.clone();
            tokio::spawn(async move {
                let body = || async move {
                    let s = scrape::scrape(&dir, POD_TIMEOUT).await;
                    for (pod, why) in &s.unreachable {
                        tracing::warn!(pod_id = %pod, %why, "pod metrics unavailable");
                    }
                    s.exposition.render()
                };
                if let Err(e) = http::serve_one(stream, "/metrics", REQUEST_TIMEOUT, body).await {
                    tracing::debug!(%peer, %e, "metrics request");
                }
            });
        }
    })
}
