//! The embedded default backend (to be written).
use std::time::Duration;

use async_trait::async_trait;

use super::{Broker, DeadEvent, DeadFilter, Delivery, QueueDepth};
use crate::{Envelope, Error};

/// SQLite broker.
pub struct SqliteBroker;
impl SqliteBroker {
    /// Opens it.
    pub async fn open(url: &str) -> Result<Self, Error> {
        Err(Error::broker(url, "not yet"))
    }
}

// Placeholder so the crate compiles on this branch; the sqlite branch replaces this file.
#[async_trait]
impl Broker for SqliteBroker {
    fn url(&self) -> String {
        String::new()
    }
    async fn publish(&self, _: &Envelope) -> Result<(), Error> {
        Err(Error::broker("sqlite", "not yet"))
    }
    async fn take(&self, _: &[String], _: Duration) -> Result<Option<Delivery>, Error> {
        Err(Error::broker("sqlite", "not yet"))
    }
    async fn ack(&self, _: &Delivery) -> Result<(), Error> {
        Err(Error::broker("sqlite", "not yet"))
    }
    async fn retry(&self, _: &Delivery, _: &Envelope, _: Duration) -> Result<(), Error> {
        Err(Error::broker("sqlite", "not yet"))
    }
    async fn dead(&self, _: &Delivery, _: &DeadEvent) -> Result<(), Error> {
        Err(Error::broker("sqlite", "not yet"))
    }
    async fn release(&self, _: &Delivery) -> Result<(), Error> {
        Err(Error::broker("sqlite", "not yet"))
    }
    async fn dead_list(&self, _: &DeadFilter) -> Result<Vec<DeadEvent>, Error> {
        Err(Error::broker("sqlite", "not yet"))
    }
    async fn dead_retry(&self, _: Option<&str>, _: &DeadFilter) -> Result<u64, Error> {
        Err(Error::broker("sqlite", "not yet"))
    }
    async fn dead_purge(&self, _: Option<&str>, _: &DeadFilter) -> Result<u64, Error> {
        Err(Error::broker("sqlite", "not yet"))
    }
    async fn depth(&self, _: &str) -> Result<QueueDepth, Error> {
        Err(Error::broker("sqlite", "not yet"))
    }
}
