//! Which sqlx errors are worth trying again
//! ([`Error::is_transient`](crate::Error::is_transient)).
//!
//! Transient: the database could not be reached or the connection broke
//! (refused, reset, closed), the
//! pool had no free connection in time, and the errors PostgreSQL itself
//! names as passing (by SQLSTATE): class `08` connection exception, `40001`
//! serialization failure, `40P01` deadlock, `53300` too many connections,
//! `55P03` lock not available, `57014` query canceled (a statement
//! timeout), `57P01`..`57P03` admin/crash shutdown and "cannot connect
//! now" (a server starting or stopping). Not transient: everything else,
//! e.g. a syntax error (`42601`), a missing table (`42P01`, run the
//! migrations), a constraint violation (class `23`), a bad URL or
//! configuration, a TLS failure, a protocol error (data sqlx did not
//! expect), a closed pool (the broker is shutting down).

/// Whether `e` may pass if the same operation is tried again later.
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    use sqlx::Error as E;
    match e {
        E::Io(io) => crate::error::io_is_transient(io),
        E::PoolTimedOut | E::WorkerCrashed => true,
        E::Database(db) => db.code().is_some_and(|c| code_is_transient(&c)),
        _ => false,
    }
}

/// Whether a SQLSTATE names a passing condition (module docs).
fn code_is_transient(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "40001" | "40P01" | "53300" | "55P03" | "57014" | "57P01" | "57P02" | "57P03"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates() {
        for c in [
            "08006", "08001", "40001", "40P01", "57P01", "57P03", "53300",
        ] {
            assert!(code_is_transient(c), "{c}");
        }
        for c in ["42601", "42P01", "23505", "23503", "22P02", "XX000"] {
            assert!(!code_is_transient(c), "{c}");
        }
    }

    #[test]
    fn driver_errors() {
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        ))));
        assert!(!is_transient(&sqlx::Error::PoolClosed));
        assert!(!is_transient(&sqlx::Error::Configuration("bad".into())));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
    }

    async fn db_error(pool: &sqlx::PgPool, sql: &str) -> sqlx::Error {
        sqlx::query(sql)
            .execute(pool)
            .await
            .expect_err("the statement fails")
    }

    /// Real errors of a real server, through `Error::is_transient` as the
    /// poller sees them (wrapped by the broker).
    #[tokio::test]
    async fn postgres_errors_are_classified() {
        let url = std::env::var("ACTION_EVENT_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let pool = match sqlx::PgPool::connect(&url).await {
            Ok(p) => p,
            Err(e) if std::env::var("ACTION_EVENT_REQUIRE_POSTGRES").as_deref() != Ok("1") => {
                eprintln!("*** SKIPPED: no PostgreSQL at {url}: {e} ***");
                return;
            }
            Err(e) => panic!("no PostgreSQL at {url}: {e}"),
        };
        let wrapped = |e: sqlx::Error| crate::Error::broker_caused("postgres://h/db", "take", e);
        let raise = |code: &str| {
            format!("DO $$ BEGIN RAISE EXCEPTION 'test' USING ERRCODE = '{code}'; END $$")
        };
        for code in [
            "serialization_failure",
            "admin_shutdown",
            "deadlock_detected",
        ] {
            let e = db_error(&pool, &raise(code)).await;
            assert!(wrapped(e).is_transient(), "{code}");
        }
        let e = db_error(&pool, "SELEC 1").await;
        assert!(!wrapped(e).is_transient(), "syntax error");
        let e = db_error(
            &pool,
            "WITH t(x) AS (VALUES (1)) SELECT * FROM t WHERE x = 'not a number'",
        )
        .await;
        assert!(!wrapped(e).is_transient(), "bad input");
        let e = db_error(&pool, &raise("unique_violation")).await;
        assert!(!wrapped(e).is_transient(), "constraint");
        // Nothing listens on port 1: refused at once.
        let e = <sqlx::PgConnection as sqlx::Connection>::connect(
            "postgres://postgres@127.0.0.1:1/test",
        )
        .await
        .expect_err("refused");
        assert!(wrapped(e).is_transient(), "connection refused");
        // Opening a broker: the pool tries for its acquire timeout (10 s).
        let e = crate::broker::connect("postgres://postgres@127.0.0.1:1/test")
            .await
            .err()
            .expect("refused");
        assert!(e.is_transient(), "opening a broker that is down: {e:?}");
    }
}
