//! `poller generate event Name`: writes an event's code into the Cargo
//! project of the current directory (see [`crate::poller::generate_event`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub(super) struct GenerateArgs {
    #[command(subcommand)]
    command: GenerateCommand,
}

#[derive(Debug, Subcommand)]
enum GenerateCommand {
    /// An event: `generate event HelloWorld` writes src/events/hello_world.rs
    /// (struct HelloWorldEvent, event `hello_world`) and, if missing,
    /// src/events/mod.rs, src/events/application_event.rs and
    /// src/bin/poller.rs, and adds what pollers write (tmp/, log/, the
    /// SQLite file) to .gitignore. Never overwrites a file.
    Event {
        /// The name in CamelCase, e.g. HelloWorld (`Event` is appended).
        name: String,
        /// The root of the Cargo project.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

pub(super) fn run(args: &GenerateArgs) -> ExitCode {
    let GenerateCommand::Event { name, dir } = &args.command;
    // A bad name is the command line's fault: a usage error.
    let names = match crate::poller::EventNames::parse(name) {
        Ok(n) => n,
        Err(e) => return super::usage_exit(super::misuse(&["generate", "event"], e)),
    };
    match crate::poller::generate_event(dir, name) {
        Ok(actions) => {
            for a in &actions {
                println!("{a}");
            }
            for note in crate::poller::generate::notes(dir, &names) {
                println!("{note}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("poller: {e}");
            ExitCode::FAILURE
        }
    }
}
