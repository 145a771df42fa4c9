//! `cargo run --example inheritance`: three levels of events, filters
//! inherited down the chain, a filter that halts, one that is skipped, and
//! the app's state reached from filters and handlers. Runs on a SQLite file
//! in a temporary directory with a poller in this process.
//!
//! ```text
//! ApplicationEvent (base)      before_filter(log_params)
//! └── AdminEvent (base)        before_filter(require_admin), retries = 3
//!     ├── PurgeCacheEvent      queue = "low": chain log_params, require_admin
//!     └── StatusReportEvent    skip_before_filter(require_admin): chain log_params
//! ```

use action_event::poller::{Poller, PollerConfig, Shutdown};
use action_event::prelude::*;
use action_event::{Client, State};

/// The app's environment, given to the poller and read with `cx.state()`.
struct Admins(Vec<String>);

/// Put into the event's context by `require_admin`, read by handlers.
struct CurrentUser(String);

/// Level 1: every event of the app logs its params first.
#[action_event(base)]
#[before_filter(log_params)]
pub struct ApplicationEvent;

pub async fn log_params(cx: &mut Context) -> Result<Flow> {
    println!("[{}] params {}", cx.name(), cx.params());
    Ok(Flow::Continue)
}

/// Level 2: admin events run only for admins; they retry less.
#[action_event(base, extends = ApplicationEvent, retries = 3)]
#[before_filter(require_admin)]
pub struct AdminEvent;

/// Halts the event (acked, logged, not failed, not retried) when the `user`
/// param is no admin.
pub async fn require_admin(cx: &mut Context) -> Result<Flow> {
    let user: String = cx.param("user")?;
    if !cx.state::<Admins>()?.0.contains(&user) {
        println!("[{}] halted: {user} is no admin", cx.name());
        return Ok(Flow::Halt);
    }
    cx.insert(CurrentUser(user));
    Ok(Flow::Continue)
}

/// Level 3: runs both filters.
#[derive(Debug, Serialize, Deserialize)]
#[action_event(extends = AdminEvent, queue = "low")]
pub struct PurgeCacheEvent {
    pub user: String,
    pub prefix: String,
}

impl Process for PurgeCacheEvent {
    async fn process(self, cx: &Context) -> Result<()> {
        let by = cx.get::<CurrentUser>().map(|u| u.0.as_str()).unwrap_or("?");
        println!("[purge_cache] purged `{}*` for {by}", self.prefix);
        Ok(())
    }
}

/// Level 3: anyone may ask for a status report.
#[derive(Debug, Serialize, Deserialize)]
#[action_event(extends = AdminEvent)]
#[skip_before_filter(require_admin)]
pub struct StatusReportEvent {
    pub user: String,
}

impl Process for StatusReportEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        println!("[status_report] all green, {}", self.user);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let registry = action_event::registry()?;
    for event in registry.events() {
        let chain: Vec<&str> = event.chain.iter().map(|f| f.path).collect();
        println!(
            "{}: queue {}, retries {}, chain [{}], ancestors {:?}",
            event.name,
            event.queue,
            event.retries,
            chain.join(", "),
            event.ancestors
        );
    }

    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("events.db").display());
    let broker = action_event::broker::connect(&url).await?;
    Client::from_broker(broker.clone()).set_global();

    queue!(purge_cache, user = "ann", prefix = "users/").await?; // runs
    queue!(purge_cache, user = "bob", prefix = "users/").await?; // halted
    queue!(status_report, user = "bob").await?; // runs: require_admin skipped

    let state = State::new().with(Admins(vec!["ann".into()]));
    let config = PollerConfig {
        exit_when_empty: true,
        // One at a time: the output reads in the order they run (the
        // medium queue before low).
        concurrency: 1,
        ..PollerConfig::default()
    };
    let summary = Poller::new(broker, state, config)?
        .run(Shutdown::new())
        .await?;
    println!("completed {}, halted {}", summary.completed, summary.halted);
    action_event::anyhow::ensure!(
        summary.completed == 2 && summary.halted == 1,
        "expected 2 completed and 1 halted: {summary:?}"
    );
    Ok(())
}
