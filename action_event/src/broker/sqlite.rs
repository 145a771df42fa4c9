//! The embedded default backend (to be written).
//!
//! ```no_run
//! # async fn run() -> Result<(), action_event::Error> {
//! let broker = action_event::broker::sqlite::SqliteBroker::open("sqlite://action_event.db").await?;
//! # Ok(()) }
//! ```
use crate::Error;
/// SQLite broker.
///
/// ```no_run
/// # async fn run() -> Result<(), action_event::Error> {
/// use action_event::broker::sqlite::SqliteBroker;
/// let broker = SqliteBroker::open("sqlite://action_event.db").await?;
/// # Ok(()) }
/// ```
pub struct SqliteBroker;
impl SqliteBroker {
    /// Opens it.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// use action_event::broker::sqlite::SqliteBroker;
    /// let broker = SqliteBroker::open("sqlite://action_event.db").await?;
    /// # Ok(()) }
    /// ```
    pub async fn open(url: &str) -> Result<Self, Error> {
        Err(Error::broker(url, "not yet"))
    }
}
