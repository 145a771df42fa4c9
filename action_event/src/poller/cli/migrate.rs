//! `poller migrate [--print]`: brings the broker's schema up to date, or
//! prints the SQL for teams that apply migrations with their own tool.
//!
//! PostgreSQL: applies the versioned migrations the database lacks (safe
//! while pollers start at the same moment: they wait on the same advisory
//! lock) and names each; `--print` writes the SQL to stdout instead,
//! touching nothing (pair it with `?migrate=off` on the brokers' URL).
//! SQLite brings its file up to date whenever it is opened: `migrate` opens
//! it and says so. RabbitMQ has no schema.

use clap::Args;

use super::{BrokerArg, Failed, misuse};
use crate::broker;

#[derive(Debug, Args)]
pub(super) struct MigrateArgs {
    /// Print the SQL of every migration (PostgreSQL) instead of applying it.
    #[arg(long)]
    pub(super) print: bool,

    #[command(flatten)]
    pub(super) broker: BrokerArg,
}

pub(super) async fn run(args: &MigrateArgs) -> Result<(), Failed> {
    let url = broker::resolve_url(args.broker.broker.as_deref());
    let scheme = url.split("://").next().unwrap_or("");
    match scheme {
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => {
            use crate::broker::postgres::{PostgresBroker, SCHEMA_VERSION, migration_sql_for_url};
            if args.print {
                print!("{}", migration_sql_for_url(&url)?);
                return Ok(());
            }
            let applied = PostgresBroker::migrate(&url).await?;
            let url = crate::redact_url(&url);
            if applied.is_empty() {
                println!("{url}: schema up to date (version {SCHEMA_VERSION})");
            } else {
                for v in &applied {
                    println!("{url}: applied migration {v}");
                }
                println!("{url}: schema up to date (version {SCHEMA_VERSION})");
            }
            Ok(())
        }
        _ if args.print => Err(misuse(
            &["migrate"],
            format!(
                "--print: only the PostgreSQL backend has SQL to print (the broker is `{}`)",
                crate::redact_url(&url)
            ),
        )
        .into()),
        _ => {
            let b = broker::connect(&url).await?;
            println!(
                "{}: nothing to migrate by hand (this backend brings its storage up to date when it is opened)",
                b.url()
            );
            Ok(())
        }
    }
}
