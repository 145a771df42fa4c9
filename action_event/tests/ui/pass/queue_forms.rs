// Every form `queue!` accepts compiles to a future of
// `Result<EventId, action_event::Error>`. Nothing is sent: the futures are
// only built in functions that are never called.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, SystemTime};

use action_event::EventId;
use action_event::prelude::*;

fn is_queue_future<F: Future<Output = Result<EventId, action_event::Error>> + Send>(_: &F) {}

struct User {
    name: String,
    ids: Vec<u64>,
}

fn forms(user: User, queue_name: &str) {
    let f = queue!(hello_world);
    is_queue_future(&f);
    let f = queue!(hello_world,);
    is_queue_future(&f);
    let f = queue!("hello_world", name = "world");
    is_queue_future(&f);
    let f = queue!("billing.invoice_paid", id = 5);
    is_queue_future(&f);
    let f = queue!(hello_world, name = "world", queue = high);
    is_queue_future(&f);
    let f = queue!(hello_world, name = "world", queue = "high");
    is_queue_future(&f);
    let f = queue!(hello_world, name = "world", queue = queue_name);
    is_queue_future(&f);
    let f = queue!(hello_world, name = "world", queue = format!("{}-2", queue_name));
    is_queue_future(&f);
    let f = queue!(send_email, people_ids = [1, 2, 3]);
    is_queue_future(&f);
    let f = queue!(send_email, meta = { "from": "me", "cc": [1, 2], "nested": { "a": null } });
    is_queue_future(&f);
    let f = queue!(hello_world, name = user.name.clone(), ids = user.ids.clone(), n = 1 + 2);
    is_queue_future(&f);
    let f = queue!(hello_world, name = &user.name, len = user.ids.len());
    is_queue_future(&f);
    let f = queue!(reminder, id = 5, delay = "30s");
    is_queue_future(&f);
    let f = queue!(reminder, id = 5, delay = Duration::from_secs(30));
    is_queue_future(&f);
    let f = queue!(reminder, id = 5, at = SystemTime::now() + Duration::from_secs(60));
    is_queue_future(&f);
    let f = queue!(r#type, r#struct = 1);
    is_queue_future(&f);
}

async fn in_app() -> Result<()> {
    let id: EventId = queue!(hello_world, name = "world").await?;
    println!("{id}");
    Ok(())
}

fn main() {}
