//! The throwaway PostgreSQL server of `crate::support::postgres`: reachable over TCP with the password in
//! its URL (and not without it), paused and resumed with its data, crash-stopped and recovered,
//! servers side by side kept apart, and nothing left behind by a drop.
//! Without PostgreSQL installed each test prints the skip line and passes, unless
//! WECOM_GATEWAY_REQUIRE_POSTGRES is set.

use std::time::Instant;

use crate::support::postgres::Postgres;
use tokio::process::Command;

/// Run `sql` through `psql` as the URL says; its unaligned, tuples-only output, or the error.
async fn psql(pg: &Postgres, url: &str, sql: &str) -> Result<String, String> {
    let mut cmd = Command::new(pg.bin_dir().join("psql"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PG") {
            cmd.env_remove(name);
        }
    }
    // -w: never prompt for a password.
    let out = cmd
        .args([
            "-X",
            "-A",
            "-t",
            "-w",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("running psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

async fn query(pg: &Postgres, sql: &str) -> String {
    psql(pg, &pg.url(), sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}\nserver log:\n{}", pg.log()))
}

/// Whether `pg_isready` finds a server accepting connections on 127.0.0.1:`port`.
async fn ready(pg: &Postgres, port: u16) -> bool {
    Command::new(pg.bin_dir().join("pg_isready"))
        .args(["-q", "-t", "2", "-h", "127.0.0.1", "-p", &port.to_string()])
        .status()
        .await
        .expect("running pg_isready")
        .success()
}

#[tokio::test]
async fn serves_over_tcp_then_pauses_and_resumes_with_its_data() {
    let t = Instant::now();
    let Some(pg) = Postgres::start().await else {
        return;
    };
    eprintln!("PostgreSQL started in {:?} on {}", t.elapsed(), pg.url());
    assert!(pg
        .url()
        .starts_with("postgres://gateway:secret-pw@127.0.0.1:"));
    assert!(pg.url().ends_with(&format!(":{}/gateway", pg.port())));
    assert_eq!(query(&pg, "select 1").await, "1");
    assert_eq!(query(&pg, "select current_user").await, "gateway");
    query(
        &pg,
        "create table kept (v text); insert into kept values ('before pause')",
    )
    .await;

    let t = Instant::now();
    pg.pause().await;
    eprintln!("paused in {:?}", t.elapsed());
    assert!(
        !ready(&pg, pg.port()).await,
        "paused, yet pg_isready answers"
    );
    assert!(psql(&pg, &pg.url(), "select 1").await.is_err());

    let t = Instant::now();
    pg.resume().await;
    eprintln!("resumed in {:?}", t.elapsed());
    assert!(ready(&pg, pg.port()).await);
    assert_eq!(query(&pg, "select 1").await, "1");
    assert_eq!(query(&pg, "select v from kept").await, "before pause");
}

#[tokio::test]
async fn the_password_is_needed() {
    let Some(pg) = Postgres::start().await else {
        return;
    };
    let wrong = pg.url().replace(":secret-pw@", ":wrong-pw@");
    let err = psql(&pg, &wrong, "select 1").await.unwrap_err();
    assert!(err.contains("password authentication failed"), "{err}");
    let none = pg.url().replace(":secret-pw@", "@");
    assert!(psql(&pg, &none, "select 1").await.is_err());
    // The gateway role is no superuser, and owns its database.
    assert_eq!(
        query(
            &pg,
            "select rolsuper from pg_roles where rolname = current_user"
        )
        .await,
        "f"
    );
    query(&pg, "create table t (id int)").await;
}

#[tokio::test]
async fn a_crash_stop_keeps_what_was_committed() {
    let Some(pg) = Postgres::start().await else {
        return;
    };
    query(
        &pg,
        "create table kept (v int); insert into kept values (7)",
    )
    .await;
    pg.crash().await;
    assert!(!ready(&pg, pg.port()).await);
    pg.resume().await;
    assert_eq!(query(&pg, "select v from kept").await, "7");
    assert!(pg.log().contains("not properly shut down"), "{}", pg.log());
}

#[tokio::test]
async fn servers_side_by_side_are_apart_and_a_drop_leaves_nothing() {
    let t = Instant::now();
    let (Some(a), Some(b)) = tokio::join!(Postgres::start(), Postgres::start()) else {
        return;
    };
    eprintln!(
        "two PostgreSQL servers started together in {:?}",
        t.elapsed()
    );
    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());
    query(&a, "create table only_in_a (v int)").await;
    assert_eq!(
        query(
            &b,
            "select count(*) from pg_tables where tablename = 'only_in_a'"
        )
        .await,
        "0"
    );

    let (port, data) = (a.port(), a.data_dir().to_path_buf());
    let t = Instant::now();
    drop(a);
    eprintln!("dropped in {:?}", t.elapsed());
    assert!(!ready(&b, port).await, "dropped, yet pg_isready answers");
    assert!(!data.exists(), "{} left behind", data.display());
    assert_eq!(query(&b, "select 1").await, "1");
}
