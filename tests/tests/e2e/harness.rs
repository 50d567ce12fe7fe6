//! The harness's own real servers start, answer and stop on a fresh
//! machine (what the sink tests build on).

use e2e::Postgres;

#[test]
fn postgres_starts_on_a_free_port_answers_and_keeps_what_it_is_given() {
    let pg = Postgres::start();
    pg.psql("create table t (id text primary key, n int)");
    pg.psql("insert into t values ('a', 1), ('b', 2) on conflict do nothing");
    pg.psql("insert into t values ('a', 9) on conflict do nothing");
    assert_eq!(
        pg.psql("select string_agg(id || '=' || n, ',' order by id) from t"),
        "a=1,b=2"
    );
    let version = pg.psql("show server_version_num");
    assert!(version.parse::<u32>().unwrap() >= 150_000, "{version}");
}
