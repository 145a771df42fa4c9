//! The embedded default backend (to be written).
use crate::Error;
/// SQLite broker.
pub struct SqliteBroker;
impl SqliteBroker {
    /// Opens it.
    pub async fn open(url: &str) -> Result<Self, Error> {
        Err(Error::broker(url, "not yet"))
    }
}
