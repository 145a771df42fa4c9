//! `poller web`: the dashboard ([`crate::web`]) and Prometheus `/metrics`
//! on one HTTP server, until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use super::{BrokerArg, Failed, PidDirArg, parse_duration};
use crate::web::{Auth, Dashboard};
use crate::{Error, broker};

#[derive(Debug, Args)]
pub(super) struct WebArgs {
    #[command(flatten)]
    broker: BrokerArg,

    #[command(flatten)]
    pid_dir: PidDirArg,

    /// Address to serve on. The default is this machine only; to open it to
    /// others, bind e.g. 0.0.0.0:9188 and set --auth.
    #[arg(long, default_value = "127.0.0.1:9188")]
    bind: SocketAddr,

    /// Require credentials: basic:USER:PASSWORD or bearer:TOKEN (also from
    /// $ACTION_EVENT_WEB_AUTH, which keeps them out of `ps`).
    #[arg(long, env = "ACTION_EVENT_WEB_AUTH", hide_env_values = true)]
    auth: Option<Auth>,

    /// Show, change nothing: no buttons, every POST refused (403).
    #[arg(long)]
    read_only: bool,

    /// The queues the Overview shows, highest priority first (spaces or
    /// commas); default: those of the live pollers, then high medium low,
    /// then the others.
    #[arg(long)]
    queues: Option<String>,

    /// How often the pollers' reports are sampled (pollers page, chart).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    sample_every: Duration,
}

pub(super) async fn run(args: &WebArgs) -> Result<(), Failed> {
    let url = broker::resolve_url(args.broker.broker.as_deref());
    let broker = broker::connect(&url).await?;
    let mut dashboard = Dashboard::new(broker)
        .pid_dir(args.pid_dir.pid_dir.clone())
        .read_only(args.read_only)
        .sample_every(args.sample_every);
    if let Some(a) = &args.auth {
        dashboard = dashboard.auth(a.clone());
    }
    if let Some(q) = &args.queues {
        let queues: Vec<&str> = q.split([' ', ',']).filter(|s| !s.is_empty()).collect();
        if !queues.is_empty() {
            dashboard = dashboard.queues(queues);
        }
    }
    if !args.bind.ip().is_loopback() && args.auth.is_none() {
        eprintln!(
            "warning: the dashboard on {} is open to the network without --auth: anyone who reaches it can retry and purge dead events{}",
            args.bind,
            if args.read_only {
                " (read-only: they can read them)"
            } else {
                ""
            }
        );
    }
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .map_err(|e| Error::io(format!("cannot serve the dashboard on {}", args.bind), e))?;
    let addr = listener.local_addr().unwrap_or(args.bind);
    eprintln!("Serving the dashboard on http://{addr}/ (metrics at http://{addr}/metrics)");
    axum::serve(listener, dashboard.router())
        .with_graceful_shutdown(stop_signal())
        .await
        .map_err(|e| Error::io("the dashboard's server stopped", e))?;
    Ok(())
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
