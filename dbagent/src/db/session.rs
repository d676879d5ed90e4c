//! One database session: a query connection and a LISTEN connection, every call under a
//! client-side deadline. Any failure ends the session; the caller reconnects.
//!
//! The LISTEN connection is polled by a task of ours (`poll_message`), not spawned as a plain
//! future: a spawned `Connection` drops notifications on the floor. A server that stops
//! answering (SIGSTOP, a cut network) is caught by the deadlines here; TCP keepalive and
//! `tcp_user_timeout` close a dead socket underneath as well.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sipcraft_config::Extension;
use sipcraft_ipc::state::Binding;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Client, NoTls, Socket, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::rows::{self, BINDING_COLUMNS, EXTENSION_COLUMNS};
use super::schema::{self, SchemaError, CHANNEL};
use super::{DbConfig, Item};
use crate::journal::{Entry, Op};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("the database password file: {0}")]
    PasswordFile(String),
    #[error("the database CA file: {0}")]
    CaFile(String),
    #[error("the database url is not valid")]
    Url(#[source] tokio_postgres::Error),
    #[error("connecting took longer than {0:?}")]
    ConnectTimeout(Duration),
    #[error("cannot connect")]
    Connect(#[source] tokio_postgres::Error),
    #[error("{what} got no answer within {after:?}")]
    Deadline { what: &'static str, after: Duration },
    #[error("{what} failed")]
    Query {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("the notification connection closed")]
    ListenClosed,
}

impl DbError {
    /// The error and its causes on one line, for logs and the alarm.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }
}

struct Statements {
    upsert: Statement,
    remove: Statement,
    call_record: Statement,
    progress: Statement,
}

const UPSERT: &str = "INSERT INTO registrations (node, aor, binding_key, contact, source, \
     transport, worker, connection, instance, reg_id, user_agent, call_id, cseq, q, expires_at, \
     seq, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, now()) \
     ON CONFLICT (node, aor, binding_key) DO UPDATE SET contact = EXCLUDED.contact, \
     source = EXCLUDED.source, transport = EXCLUDED.transport, worker = EXCLUDED.worker, \
     connection = EXCLUDED.connection, instance = EXCLUDED.instance, reg_id = EXCLUDED.reg_id, \
     user_agent = EXCLUDED.user_agent, call_id = EXCLUDED.call_id, cseq = EXCLUDED.cseq, \
     q = EXCLUDED.q, expires_at = EXCLUDED.expires_at, seq = EXCLUDED.seq, updated_at = now() \
     WHERE registrations.seq < EXCLUDED.seq";
const REMOVE: &str = "DELETE FROM registrations \
     WHERE node = $1 AND aor = $2 AND binding_key = $3 AND seq < $4";
/// A call record; a second record with the same id (the BYE that ends an answered call,
/// from whichever worker saw it) completes the first: the earliest start, the first answer
/// and end, the answer's status, and the reason the call ended. Merging is idempotent.
const CALL_RECORD: &str = "INSERT INTO call_records (id, node, call_id, caller, callee, \
     started_at, answered_at, ended_at, final_status, reason, worker, seq) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
     ON CONFLICT (id) DO UPDATE SET \
     started_at = LEAST(call_records.started_at, EXCLUDED.started_at), \
     answered_at = COALESCE(call_records.answered_at, EXCLUDED.answered_at), \
     ended_at = COALESCE(call_records.ended_at, EXCLUDED.ended_at), \
     final_status = CASE WHEN call_records.answered_at IS NULL \
         AND EXCLUDED.answered_at IS NOT NULL THEN EXCLUDED.final_status \
         ELSE call_records.final_status END, \
     reason = CASE WHEN call_records.ended_at IS NULL AND EXCLUDED.ended_at IS NOT NULL \
         THEN EXCLUDED.reason ELSE call_records.reason END, \
     seq = GREATEST(call_records.seq, EXCLUDED.seq)";
const PROGRESS: &str = "INSERT INTO sipcraft_nodes (node, applied_seq) VALUES ($1, $2) \
     ON CONFLICT (node) DO UPDATE SET \
     applied_seq = GREATEST(sipcraft_nodes.applied_seq, EXCLUDED.applied_seq), updated_at = now()";

/// A live session.
pub struct Session {
    client: Client,
    listen: Client,
    notes: mpsc::UnboundedReceiver<String>,
    tasks: Vec<JoinHandle<()>>,
    call: Duration,
    node: String,
    stmts: Option<Statements>,
}

impl Drop for Session {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Runs `fut` under a deadline.
async fn within<T, E>(
    what: &'static str,
    after: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, DbError>
where
    DbError: From<(&'static str, E)>,
{
    match tokio::time::timeout(after, fut).await {
        Ok(r) => r.map_err(|e| DbError::from((what, e))),
        Err(_) => Err(DbError::Deadline { what, after }),
    }
}

impl From<(&'static str, tokio_postgres::Error)> for DbError {
    fn from((what, source): (&'static str, tokio_postgres::Error)) -> Self {
        DbError::Query { what, source }
    }
}

impl From<(&'static str, DbError)> for DbError {
    fn from((_, e): (&'static str, DbError)) -> Self {
        e
    }
}

impl From<(&'static str, SchemaError)> for DbError {
    fn from((_, e): (&'static str, SchemaError)) -> Self {
        DbError::Schema(e)
    }
}

impl Session {
    /// Connects both connections, within the connect timeout as a whole.
    pub async fn open(cfg: &DbConfig) -> Result<Session, DbError> {
        match tokio::time::timeout(cfg.connect_timeout, Self::open_inner(cfg)).await {
            Ok(r) => r,
            Err(_) => Err(DbError::ConnectTimeout(cfg.connect_timeout)),
        }
    }

    async fn open_inner(cfg: &DbConfig) -> Result<Session, DbError> {
        let mut pg = parse_url(&cfg.url)?;
        if let Some(file) = &cfg.password_file {
            let password =
                sipcraft_config::read_password_file(file).map_err(DbError::PasswordFile)?;
            pg.password(password);
        }
        pg.connect_timeout(cfg.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(cfg.call_deadline() * 2);
        let (client, listen, notes, tasks) = match &cfg.ca_file {
            Some(ca_file) => {
                pg.ssl_mode(SslMode::Require);
                connect_pair(&mut pg, tls_connector(ca_file)?).await?
            }
            None => connect_pair(&mut pg, NoTls).await?,
        };
        let session = Session {
            client,
            listen,
            notes,
            tasks,
            call: cfg.call_deadline(),
            node: cfg.node.clone(),
            stmts: None,
        };
        let set = format!(
            "SET statement_timeout = {}",
            cfg.statement_timeout.as_millis()
        );
        within("setting statement_timeout", session.call, async {
            session.client.batch_execute(&set).await
        })
        .await?;
        Ok(session)
    }

    /// Applies pending migrations (with a longer deadline: DDL may wait for locks).
    pub async fn migrate(&mut self) -> Result<Vec<i32>, DbError> {
        let after = self.call.max(Duration::from_secs(30));
        let client = &mut self.client;
        let applied = within("migrating the schema", after, schema::migrate(client)).await?;
        let stmts = within("preparing statements", self.call, async {
            Ok::<_, tokio_postgres::Error>(Statements {
                upsert: self.client.prepare(UPSERT).await?,
                remove: self.client.prepare(REMOVE).await?,
                call_record: self.client.prepare(CALL_RECORD).await?,
                progress: self.client.prepare(PROGRESS).await?,
            })
        })
        .await?;
        self.stmts = Some(stmts);
        Ok(applied)
    }

    /// Starts following extension changes.
    pub async fn listen(&self) -> Result<(), DbError> {
        let sql = format!("LISTEN {CHANNEL}");
        within("LISTEN", self.call, self.listen.batch_execute(&sql)).await
    }

    /// The next notification payload; `None` when the LISTEN connection is gone.
    pub async fn notification(&mut self) -> Option<String> {
        self.notes.recv().await
    }

    /// A notification already received, without waiting.
    pub fn try_notification(&mut self) -> Option<String> {
        self.notes.try_recv().ok()
    }

    /// Every extension; rows that are not valid are returned as messages.
    pub async fn load_extensions(&self) -> Result<(Vec<Extension>, Vec<String>), DbError> {
        let sql = format!("SELECT {EXTENSION_COLUMNS} FROM extensions");
        let rows = within(
            "loading extensions",
            self.call,
            self.client.query(&sql, &[]),
        )
        .await?;
        let mut good = Vec::with_capacity(rows.len());
        let mut bad = Vec::new();
        for row in &rows {
            match rows::extension(row) {
                Ok(e) => good.push(e),
                Err(why) => bad.push(why),
            }
        }
        Ok((good, bad))
    }

    /// The current rows of `numbers`: `None` for one that is gone or not valid.
    pub async fn fetch(
        &self,
        numbers: &[String],
    ) -> Result<Vec<(String, Option<Extension>)>, DbError> {
        let sql = format!("SELECT {EXTENSION_COLUMNS} FROM extensions WHERE number = ANY($1)");
        let rows = within(
            "fetching changed extensions",
            self.call,
            self.client.query(&sql, &[&numbers]),
        )
        .await?;
        let mut found: Vec<(String, Option<Extension>)> =
            numbers.iter().map(|n| (n.clone(), None)).collect();
        for row in &rows {
            match rows::extension(row) {
                Ok(e) => {
                    if let Some(slot) = found.iter_mut().find(|(n, _)| *n == e.number) {
                        slot.1 = Some(e);
                    }
                }
                Err(why) => {
                    tracing::warn!(problem = %why, "extension row not valid; treated as absent")
                }
            }
        }
        Ok(found)
    }

    /// The highest journal sequence number this node has applied.
    pub async fn watermark(&self) -> Result<u64, DbError> {
        let row = within(
            "reading the applied sequence",
            self.call,
            self.client.query_opt(
                "SELECT applied_seq FROM sipcraft_nodes WHERE node = $1",
                &[&self.node],
            ),
        )
        .await?;
        Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    /// This node's unexpired registrations.
    pub async fn load_bindings(&self) -> Result<Vec<Binding>, DbError> {
        let sql = format!(
            "SELECT {BINDING_COLUMNS} FROM registrations WHERE node = $1 AND expires_at > now()"
        );
        let rows = within(
            "loading registrations",
            self.call,
            self.client.query(&sql, &[&self.node]),
        )
        .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                rows::binding(r)
                    .map_err(|why| tracing::warn!(problem = %why, "registration row skipped"))
                    .ok()
            })
            .collect())
    }

    /// Writes a batch and the new applied sequence in one transaction.
    pub async fn apply(&mut self, batch: &[Item]) -> Result<(), DbError> {
        let after = self.call;
        let node = self.node.clone();
        let Some(stmts) = &self.stmts else {
            return Err(DbError::Deadline {
                what: "writing before the schema was ready",
                after,
            });
        };
        let client = &mut self.client;
        within("writing the journal", after, async move {
            let tx = client.transaction().await?;
            let mut last = 0;
            for item in batch {
                last = item.seq();
                match item {
                    Item::Write(entry) => write_entry(&tx, stmts, &node, entry).await?,
                    Item::Reconcile { seq, bindings } => {
                        let aors: Vec<&str> = bindings.iter().map(|b| b.aor.as_str()).collect();
                        let keys: Vec<&str> = bindings.iter().map(|b| b.key.as_str()).collect();
                        tx.execute(
                            "DELETE FROM registrations WHERE node = $1 AND (aor, binding_key) \
                             NOT IN (SELECT * FROM unnest($2::text[], $3::text[]))",
                            &[&node, &aors, &keys],
                        )
                        .await?;
                        for b in bindings {
                            upsert(&tx, stmts, &node, *seq, b).await?;
                        }
                    }
                }
            }
            tx.execute(&stmts.progress, &[&node, &(last as i64)])
                .await?;
            tx.commit().await
        })
        .await
    }

    /// A round trip on both connections.
    pub async fn ping(&self) -> Result<(), DbError> {
        within("ping", self.call, async {
            self.client.simple_query("SELECT 1").await?;
            self.listen.simple_query("SELECT 1").await
        })
        .await
        .map(drop)
    }

    /// Deletes this node's registrations that expired over a minute ago.
    pub async fn purge_expired(&self) -> Result<u64, DbError> {
        within(
            "deleting expired registrations",
            self.call,
            self.client.execute(
                "DELETE FROM registrations WHERE node = $1 \
                 AND expires_at < now() - interval '1 minute'",
                &[&self.node],
            ),
        )
        .await
    }
}

async fn write_entry(
    tx: &tokio_postgres::Transaction<'_>,
    stmts: &Statements,
    node: &str,
    entry: &Entry,
) -> Result<(), tokio_postgres::Error> {
    let seq = entry.seq as i64;
    match &entry.op {
        Op::BindingUpserted(b) => upsert(tx, stmts, node, entry.seq, b).await,
        Op::BindingRemoved { aor, key } => tx
            .execute(&stmts.remove, &[&node, aor, key, &seq])
            .await
            .map(drop),
        Op::CallRecord(r) => tx
            .execute(
                &stmts.call_record,
                &[
                    &r.id,
                    &node,
                    &r.call_id,
                    &r.caller,
                    &r.callee,
                    &rows::time(r.started_ms),
                    &r.answered_ms.map(rows::time),
                    &r.ended_ms.map(rows::time),
                    &(r.final_status as i16),
                    &r.reason,
                    &r.worker,
                    &seq,
                ],
            )
            .await
            .map(drop),
    }
}

async fn upsert(
    tx: &tokio_postgres::Transaction<'_>,
    stmts: &Statements,
    node: &str,
    seq: u64,
    b: &Binding,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        &stmts.upsert,
        &[
            &node,
            &b.aor,
            &b.key,
            &b.contact,
            &b.source.to_string(),
            &b.transport.as_str(),
            &b.owner,
            &b.connection.map(|c| c as i64),
            &b.instance,
            &b.reg_id.map(i64::from),
            &b.user_agent,
            &b.call_id,
            &i64::from(b.cseq),
            &b.q.map(|q| q as i16),
            &rows::time(b.expires_at_ms),
            &(seq as i64),
        ],
    )
    .await
    .map(drop)
}

/// The query connection, the LISTEN connection polled by a task of ours, the tasks driving
/// both, and the notifications' channel.
type Pair = (
    Client,
    Client,
    mpsc::UnboundedReceiver<String>,
    Vec<JoinHandle<()>>,
);

/// Opens both connections of a session over `tls` (`NoTls` for plain TCP).
async fn connect_pair<T>(pg: &mut tokio_postgres::Config, tls: T) -> Result<Pair, DbError>
where
    T: MakeTlsConnect<Socket> + Clone,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    pg.application_name("sipcraft-dbagent");
    let (client, conn) = pg.connect(tls.clone()).await.map_err(DbError::Connect)?;
    let mut tasks = vec![tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "database connection ended");
        }
    })];
    pg.application_name("sipcraft-dbagent-listen");
    let (listen, mut lconn) = match pg.connect(tls).await {
        Ok(pair) => pair,
        Err(e) => {
            tasks[0].abort();
            return Err(DbError::Connect(e));
        }
    };
    let (tx, notes) = mpsc::unbounded_channel();
    tasks.push(tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| lconn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "notification connection ended");
                    return;
                }
                None => return,
            }
        }
    }));
    Ok((client, listen, notes, tasks))
}

/// TLS that trusts only the authorities in `ca_file` and checks the URL's host name against
/// the server's certificate. The file is read at every connection attempt, like the
/// password file, so a renewed authority needs no restart.
fn tls_connector(ca_file: &Path) -> Result<MakeRustlsConnect, DbError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let fail = |e: &dyn std::fmt::Display| DbError::CaFile(format!("{}: {e}", ca_file.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| fail(&e))? {
        roots
            .add(cert.map_err(|e| fail(&e))?)
            .map_err(|e| fail(&e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The connection settings in a PostgreSQL URL. libpq's `sslmode=verify-ca` and
/// `verify-full` are what sipcraft always does with a `ca_file` (and the configuration check
/// insists on one), but tokio-postgres knows only `disable`, `prefer` and `require`.
fn parse_url(url: &str) -> Result<tokio_postgres::Config, DbError> {
    url.replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require")
        .parse()
        .map_err(DbError::Url)
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn libpq_verify_modes_are_understood() {
        for mode in ["verify-full", "verify-ca", "require"] {
            let url = format!("postgresql://u@db.example:5433/sip?sslmode={mode}");
            let pg = parse_url(&url).unwrap_or_else(|e| panic!("{mode}: {e}"));
            assert_eq!(pg.get_ssl_mode(), SslMode::Require, "{mode}");
            assert_eq!(pg.get_ports(), [5433]);
        }
        assert!(parse_url("postgresql://u@db/sip?sslmode=sometimes").is_err());
    }
}
