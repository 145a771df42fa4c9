//! Transactional enqueue on PostgreSQL: an order and its `order_placed`
//! event are written in one transaction, so the event exists if and only if
//! the order does. Needs `action_event` with the `postgres` feature, `serde`
//! (`derive`) and `tokio`.
//! Run it: `cargo run --example postgres` (PostgreSQL at
//! `postgres://postgres@127.0.0.1/test`, or set `ACTION_EVENT_URL`; it
//! works in the schema `example_postgres` and drops it at the end).

use action_event::prelude::*;
use action_event::sqlx;
use action_event::{Client, QueueExt, QueueRequest};

#[derive(Debug, Serialize, Deserialize)]
#[action_event(queue = "high")]
pub struct OrderPlacedEvent {
    pub id: i64,
}

impl Process for OrderPlacedEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        println!("order {} placed", self.id);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let db = std::env::var("ACTION_EVENT_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1/test".into());
    let db = db.split('?').next().unwrap_or(&db).to_string();
    // The broker's tables go into their own schema (created by `connect`).
    let client = Client::connect(&format!("{db}?schema=example_postgres")).await?;
    let pool = sqlx::PgPool::connect(&db).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS example_postgres.orders (id BIGINT PRIMARY KEY)")
        .execute(&pool)
        .await?;

    client
        .scope(async {
            // Committed: the order and its event.
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO example_postgres.orders (id) VALUES (7)")
                .execute(&mut *tx)
                .await?;
            queue!(order_placed, id = 7).on(&mut tx).await?;
            tx.commit().await?;

            // Rolled back: neither the order nor its events (typed forms).
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO example_postgres.orders (id) VALUES (8)")
                .execute(&mut *tx)
                .await?;
            OrderPlacedEvent { id: 8 }.queue().on(&mut tx).await?;
            // Many at once (one multi-row insert), typed and by name.
            let more: Vec<OrderPlacedEvent> = (9..12).map(|id| OrderPlacedEvent { id }).collect();
            OrderPlacedEvent::queue_many(&more).on(&mut tx).await?;
            action_event::queue_many(
                (12..15).map(|id| QueueRequest::new("order_placed").param("id", id)),
            )
            .on(&mut tx)
            .await?;
            tx.rollback().await?;
            Ok::<_, action_event::anyhow::Error>(())
        })
        .await?;

    let waiting = client.broker().depth("high").await?.waiting;
    println!("events waiting: {waiting} (order 7's; order 8 rolled back with its events)");
    sqlx::query("DROP SCHEMA example_postgres CASCADE")
        .execute(&pool)
        .await?;
    Ok(())
}
