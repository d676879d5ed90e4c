//! `[database] ca_file`: the dbagent talks TLS to PostgreSQL and verifies the server's
//! certificate and host name against the authorities in the file. It never falls back to
//! plain TCP, and a certificate from another authority is refused.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use common::postgres::{setup_with_database, Postgres};
use common::sip::Phone;
use common::tls::Pki;
use common::{wait_for, Server, Setup};

/// Turns TLS on in `pg` with the server certificate of `pki` (for 127.0.0.1), by a reload.
fn enable_ssl(pg: &Postgres, pki: &Pki) {
    // PostgreSQL wants its key owned by itself and private.
    let owner = std::fs::metadata(pg.dir.path()).unwrap();
    let (cert, key) = (
        pg.dir.path().join("server.crt"),
        pg.dir.path().join("server.key"),
    );
    std::fs::copy(pki.cert_path(), &cert).unwrap();
    std::fs::copy(pki.key_path(), &key).unwrap();
    for f in [&cert, &key] {
        std::os::unix::fs::chown(f, Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    pg.psql(&format!(
        "ALTER SYSTEM SET ssl_cert_file = '{}'",
        cert.display()
    ));
    pg.psql(&format!(
        "ALTER SYSTEM SET ssl_key_file = '{}'",
        key.display()
    ));
    pg.psql("ALTER SYSTEM SET ssl = on");
    assert_eq!(pg.psql("SELECT pg_reload_conf()"), "t");
    wait_for("ssl on", Duration::from_secs(5), || {
        (pg.psql("SHOW ssl") == "on").then_some(())
    });
}

fn setup(pg: &Postgres, ca: &std::path::Path) -> Setup {
    let ca_file = format!("ca_file = \"{}\"\n", ca.display());
    setup_with_database(&pg.database_toml_as("sipcraft", &ca_file))
}

/// The dbagent's connections in PostgreSQL and how many of them are TLS.
fn dbagent_connections(pg: &Postgres) -> (i64, i64) {
    let row = pg.psql(
        "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.application_name LIKE 'sipcraft-dbagent%'",
    );
    let (all, tls) = row.split_once('|').unwrap();
    (all.parse().unwrap(), tls.parse().unwrap())
}

#[test]
fn with_a_ca_file_the_connection_is_verified_tls_and_never_plain() {
    let pg = Postgres::start();
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::new(certs.path(), "database");

    // The server speaks no TLS yet: the dbagent refuses plain TCP rather than fall back.
    let server = Server::start(setup(&pg, &pki.ca_path()));
    wait_for(
        "the refused plain connection logged",
        Duration::from_secs(10),
        || server.log().contains("does not support TLS").then_some(()),
    );
    assert_eq!(dbagent_connections(&pg).0, 0, "{}", server.log());

    // TLS on: the next attempt connects, verified, with both connections encrypted.
    enable_ssl(&pg, &pki);
    pg.wait_schema();
    pg.psql("INSERT INTO extensions (number, password) VALUES ('4101', 'tls')");
    wait_for("4101 registrable", Duration::from_secs(5), || {
        let mut phone = Phone::udp(server.udp_addr(), "4101", "tls");
        let contact = phone.contact();
        (phone.register(&contact, Some("MD5")).status == 200).then_some(())
    });
    let (all, tls) = dbagent_connections(&pg);
    assert_eq!((all, tls), (2, 2), "query and LISTEN connections over TLS");

    // Another sipcraft trusting another authority: the certificate is refused.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Pki::new(other_dir.path(), "someone else");
    let stranger = Server::start(setup(&pg, &other.ca_path()));
    wait_for("the unknown issuer logged", Duration::from_secs(10), || {
        stranger.log().contains("UnknownIssuer").then_some(())
    });
    assert_eq!(dbagent_connections(&pg), (2, 2), "{}", stranger.log());
}
