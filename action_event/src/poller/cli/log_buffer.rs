//! The log file's writer: lines are gathered in memory and written by a
//! thread of their own, at most [`FLUSH_EVERY`] after they were logged.
//!
//! A `write` per line cost the poller a system call per line, two per
//! event. Here a line is a copy into a buffer under a lock; the writer
//! thread writes what gathered in one call. WARN and ERROR lines are written
//! at once (with what is before them), and the buffer is written when the
//! poller ends ([`flush`]); a process killed outright (`SIGKILL`) loses at
//! most the last [`FLUSH_EVERY`] of INFO lines. A logger that gets ahead of
//! the disk by more than [`MAX_PENDING`] writes itself: lines are never
//! dropped.

use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a logged INFO line may wait in memory.
pub(super) const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Past this many bytes waiting, a logging thread writes them itself.
const MAX_PENDING: usize = 1 << 20;

struct Shared {
    pending: Mutex<Vec<u8>>,
    file: Mutex<File>,
    wake: Condvar,
}

impl Shared {
    /// Writes everything pending (the file lock keeps lines in order).
    fn write_out(&self) {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if !bytes.is_empty() {
            // Like the unbuffered writer: a log that cannot be written is not
            // an error of the poller.
            let _ = file.write_all(&bytes);
        }
    }
}

/// The file writer of the process's log (one per process: the last made
/// is the one [`flush`] writes out).
static CURRENT: OnceLock<Mutex<Option<Arc<Shared>>>> = OnceLock::new();

/// A log file writer that buffers (see the module docs).
///
/// ```ignore
/// let w = BufferedFile::new(std::fs::File::create("poller.log")?);
/// tracing_subscriber::fmt().with_writer(w).init();
/// ```
#[derive(Clone)]
pub(super) struct BufferedFile(Arc<Shared>);

impl BufferedFile {
    /// Starts the writer thread for `file`.
    pub(super) fn new(file: File) -> io::Result<BufferedFile> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::with_capacity(64 * 1024)),
            file: Mutex::new(file),
            wake: Condvar::new(),
        });
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("action_event-log".into())
            .spawn(move || {
                loop {
                    // Asleep until a line comes (no wake-ups while idle),
                    // then lets lines gather for `FLUSH_EVERY`.
                    {
                        let mut pending = worker.pending.lock().unwrap_or_else(|e| e.into_inner());
                        while pending.is_empty() {
                            pending = worker.wake.wait(pending).unwrap_or_else(|e| e.into_inner());
                        }
                    }
                    std::thread::sleep(FLUSH_EVERY);
                    worker.write_out();
                }
            })?;
        *CURRENT
            .get_or_init(|| Mutex::new(None))
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(shared.clone());
        Ok(BufferedFile(shared))
    }
}

/// Writes out what the log file's writer holds (the poller calls it as it
/// ends); nothing when the log is not a buffered file.
pub(super) fn flush() {
    let current = CURRENT
        .get()
        .and_then(|c| c.lock().unwrap_or_else(|e| e.into_inner()).clone());
    if let Some(shared) = current {
        shared.write_out();
    }
}

/// One line being written.
pub(super) struct Line<'a> {
    shared: &'a Shared,
    urgent: bool,
}

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let full = {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if pending.is_empty() {
                // The first line of a batch wakes the writer thread.
                self.shared.wake.notify_one();
            }
            pending.extend_from_slice(buf);
            pending.len() >= MAX_PENDING
        };
        if full || self.urgent {
            self.shared.write_out();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferedFile {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            shared: &self.0,
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line<'a> {
        Line {
            shared: &self.0,
            urgent: *meta.level() <= tracing::Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_lines_reach_the_file_within_the_interval_and_warnings_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let w = BufferedFile::new(File::create(&path).expect("create")).expect("writer");
        let info = tracing::Metadata::new(
            "i",
            "t",
            tracing::Level::INFO,
            None,
            None,
            None,
            tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&CS)),
            tracing::metadata::Kind::EVENT,
        );
        w.make_writer_for(&info).write_all(b"one\n").expect("write");
        let deadline = std::time::Instant::now() + FLUSH_EVERY * 20;
        while std::fs::read_to_string(&path).expect("read") != "one\n" {
            assert!(
                std::time::Instant::now() < deadline,
                "an INFO line was not written within {:?}",
                FLUSH_EVERY * 20
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let warn = tracing::Metadata::new(
            "w",
            "t",
            tracing::Level::WARN,
            None,
            None,
            None,
            tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&CS)),
            tracing::metadata::Kind::EVENT,
        );
        w.make_writer_for(&info).write_all(b"two\n").expect("write");
        w.make_writer_for(&warn)
            .write_all(b"three\n")
            .expect("write");
        // The warning wrote what was before it too, in order, at once.
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "one\ntwo\nthree\n"
        );
        w.make_writer_for(&info)
            .write_all(b"four\n")
            .expect("write");
        flush();
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "one\ntwo\nthree\nfour\n"
        );
    }

    struct Cs;
    impl tracing::callsite::Callsite for Cs {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &tracing::Metadata<'_> {
            unreachable!("the test never asks its callsite for metadata")
        }
    }
    static CS: Cs = Cs;
}
