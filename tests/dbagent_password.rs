//! `[database] password_file`: the dbagent logs in with the password from a file, reads it
//! again at every connection attempt (a rotated password applies at the next reconnect
//! without a reload), and never writes it to the log.

mod common;

use std::time::{Duration, Instant};

use common::postgres::{setup_with_database, Postgres};
use common::sip::Phone;
use common::{wait_for, Server};

/// A login role that must give its password: scram-sha-256 for it alone, first in pg_hba
/// (the harness's own `sipcraft` role stays trusted).
fn role_with_password(pg: &Postgres, role: &str, password: &str) {
    pg.psql(&format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"));
    pg.psql(&format!("ALTER DATABASE sipcraft OWNER TO {role}"));
    pg.psql(&format!("ALTER SCHEMA public OWNER TO {role}"));
    let hba = std::path::PathBuf::from(pg.psql("SHOW hba_file"));
    let rules = std::fs::read_to_string(&hba).unwrap();
    let rule = format!("host all {role} 127.0.0.1/32 scram-sha-256\n");
    std::fs::write(&hba, rule + &rules).unwrap();
    assert_eq!(pg.psql("SELECT pg_reload_conf()"), "t");
}

fn registers(server: &Server, user: &str, pw: &str) -> bool {
    let mut phone = Phone::udp(server.udp_addr(), user, pw);
    let contact = phone.contact();
    phone.register(&contact, Some("MD5")).status == 200
}

#[test]
fn the_password_comes_from_its_file_at_every_connection_attempt() {
    let pg = Postgres::start();
    role_with_password(&pg, "frontdesk", "right-horse-battery");
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("db.password");
    std::fs::write(&file, "wrong-staple\n").unwrap();

    let password_file = format!("password_file = \"{}\"\n", file.display());
    let setup = setup_with_database(&pg.database_toml_as("frontdesk", &password_file));
    // Workers never wait for the database: ready although the login fails.
    let server = Server::start(setup);
    wait_for("the refused login logged", Duration::from_secs(10), || {
        server
            .log()
            .contains("password authentication failed")
            .then_some(())
    });
    assert_eq!(
        pg.count("SELECT count(*) FROM pg_tables WHERE tablename = 'extensions'"),
        0,
        "no schema without a login"
    );

    // The password is rotated in the file only: the next attempt logs in, creates the
    // schema, and extensions written by the front end reach the workers.
    std::fs::write(&file, "right-horse-battery\n").unwrap();
    pg.wait_schema();
    pg.psql("INSERT INTO extensions (number, password) VALUES ('4001', 'desk')");
    let started = Instant::now();
    wait_for("4001 registrable", Duration::from_secs(5), || {
        registers(&server, "4001", "desk").then_some(())
    });
    eprintln!("registrable {:?} after the insert", started.elapsed());

    let log = server.log();
    for secret in ["right-horse-battery", "wrong-staple"] {
        assert!(!log.contains(secret), "the password is in the log:\n{log}");
    }
}
