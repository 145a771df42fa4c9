// A comma inside a param's value belongs to the value: in a turbofish
// (`HashMap::<u8, u8>::new()`), in generics (`size_of::<HashMap<u8, u8>>()`),
// in a closure's parameters (`|a, b| a + b`), in nested macros
// (`vec![1, 2]`, `format!("{}", x)`). Comparisons stay comparisons
// (`lt = 1 < 2, gt = 3 > 2`). Nothing is sent: the futures are only built.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::{Duration, SystemTime};

use action_event::EventId;
use action_event::prelude::*;

fn is_queue_future<F: Future<Output = Result<EventId, action_event::Error>> + Send>(_: &F) {}

fn pick<A: Into<u64>, B: Into<u64>>(a: A, b: B) -> u64 {
    a.into() + b.into()
}

fn forms(ids: Vec<u32>, x: &str) {
    let f = queue!(stats, map = HashMap::<u8, u8>::new(), n = 1);
    is_queue_future(&f);
    let f = queue!(
        stats,
        map = BTreeMap::<String, Vec<u8>>::new(),
        size = std::mem::size_of::<HashMap<u8, u8>>(),
        total = pick::<u8, u32>(1, 2),
    );
    is_queue_future(&f);
    let f = queue!(
        stats,
        sum = ids.iter().fold(0, |a, b| a + b),
        max = ids.iter().copied().reduce(|a, b| a.max(b)),
        pairs = ids.iter().map(|&a| (a, a * 2)).collect::<Vec<(u32, u32)>>(),
    );
    is_queue_future(&f);
    let f = queue!(
        stats,
        v = vec![1, 2],
        s = format!("{}", x),
        nested = vec![format!("{}-{}", 1, 2), format!("{x}")],
        lt = 1 < 2,
        gt = 3 > 2,
        json = [1, 2],
    );
    is_queue_future(&f);
    let f = queue!(
        reminder,
        id = HashMap::<u8, u8>::new().len(),
        delay = Duration::from_secs(pick::<u8, u8>(1, 2)),
        queue = format!("{}-{}", "high", 2),
    );
    is_queue_future(&f);
    let f = queue!(
        reminder,
        at = SystemTime::now() + Duration::from_secs(pick::<u8, u8>(1, 2)),
        id = 5,
    );
    is_queue_future(&f);
}

fn main() {}
