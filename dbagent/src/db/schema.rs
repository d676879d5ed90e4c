//! The PostgreSQL schema, as numbered migrations the dbagent applies at start.
//!
//! Applying is idempotent: each migration runs once, in one transaction with its row in
//! `sipcraft_schema`, under an advisory lock so two nodes starting together do not race. A
//! database whose schema is newer than this build knows is refused (the dbagent keeps
//! serving from its cache and says so). `docs/schema.md` documents the result for the
//! authors of management front ends; keep it in step.

use tokio_postgres::Client;

/// One schema change.
#[derive(Debug)]
pub struct Migration {
    pub version: i32,
    pub description: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. Append only; never edit one that has shipped.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "extensions, registrations, call records, node progress, change notifications",
    sql: V1,
}];

/// The newest schema version this build knows.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Key of the advisory lock held while migrating ("sipcraft" in ASCII, truncated).
const LOCK_KEY: i64 = 0x7369_7063_7261_6674;

/// Channel the extension triggers notify on; the payload is the extension number, or empty
/// after a TRUNCATE (reload everything).
pub const CHANNEL: &str = "sipcraft_extensions";

const V1: &str = r#"
CREATE TABLE extensions (
    number          text PRIMARY KEY
                    CHECK (number ~ '^[A-Za-z0-9._+-]{1,64}$'),
    name            text,
    password        text CHECK (password <> ''),
    ha1_md5         text CHECK (ha1_md5 ~ '^[0-9A-Fa-f]{32}$'),
    ha1_sha256      text CHECK (ha1_sha256 ~ '^[0-9A-Fa-f]{64}$'),
    enabled         boolean NOT NULL DEFAULT true,
    auth_algorithms text[]
                    CHECK (cardinality(auth_algorithms) > 0
                           AND auth_algorithms <@ ARRAY['MD5', 'SHA-256']::text[]),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT extensions_one_kind_of_secret
        CHECK ((password IS NOT NULL) <> (ha1_md5 IS NOT NULL OR ha1_sha256 IS NOT NULL))
);

CREATE FUNCTION sipcraft_extensions_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER extensions_touch BEFORE UPDATE ON extensions
    FOR EACH ROW EXECUTE FUNCTION sipcraft_extensions_touch();

CREATE FUNCTION sipcraft_extensions_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('sipcraft_extensions', '');
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('sipcraft_extensions', OLD.number);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pg_notify('sipcraft_extensions', NEW.number);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER extensions_notify AFTER INSERT OR UPDATE OR DELETE ON extensions
    FOR EACH ROW EXECUTE FUNCTION sipcraft_extensions_notify();
CREATE TRIGGER extensions_notify_truncate AFTER TRUNCATE ON extensions
    FOR EACH STATEMENT EXECUTE FUNCTION sipcraft_extensions_notify();

CREATE TABLE registrations (
    node        text NOT NULL,
    aor         text NOT NULL,
    binding_key text NOT NULL,
    contact     text NOT NULL,
    source      text NOT NULL,
    transport   text NOT NULL,
    worker      text NOT NULL,
    connection  bigint,
    instance    text,
    reg_id      bigint,
    user_agent  text,
    call_id     text NOT NULL,
    cseq        bigint NOT NULL,
    q           smallint,
    expires_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    seq         bigint NOT NULL,
    PRIMARY KEY (node, aor, binding_key)
);
CREATE INDEX registrations_aor ON registrations (aor);

CREATE TABLE call_records (
    id           text PRIMARY KEY,
    node         text NOT NULL,
    call_id      text NOT NULL,
    caller       text NOT NULL,
    callee       text NOT NULL,
    started_at   timestamptz NOT NULL,
    answered_at  timestamptz,
    ended_at     timestamptz,
    final_status smallint NOT NULL,
    reason       text NOT NULL,
    worker       text NOT NULL,
    seq          bigint NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX call_records_started_at ON call_records (started_at);

CREATE TABLE sipcraft_nodes (
    node        text PRIMARY KEY,
    applied_seq bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
"#;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("the database schema is version {found}, newer than this sipcraft build knows ({known}): upgrade sipcraft; the database is not used meanwhile")]
    Newer { found: i32, known: i32 },
    #[error("migration to schema version {version} failed")]
    Migrate {
        version: i32,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("cannot read the schema version")]
    Version(#[source] tokio_postgres::Error),
}

/// Brings the schema up to [`latest`]; returns the versions applied.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, SchemaError> {
    let tx = client.transaction().await.map_err(SchemaError::Version)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(SchemaError::Version)?;
    let exists: bool = tx
        .query_one("SELECT to_regclass('sipcraft_schema') IS NOT NULL", &[])
        .await
        .map_err(SchemaError::Version)?
        .get(0);
    if !exists {
        tx.batch_execute(
            "CREATE TABLE sipcraft_schema (
                 version     integer PRIMARY KEY,
                 description text NOT NULL,
                 applied_at  timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(SchemaError::Version)?;
    }
    let found: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM sipcraft_schema", &[])
        .await
        .map_err(SchemaError::Version)?
        .get(0);
    if found > latest() {
        return Err(SchemaError::Newer {
            found,
            known: latest(),
        });
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version > found) {
        let err = |source| SchemaError::Migrate {
            version: m.version,
            source,
        };
        tx.batch_execute(m.sql).await.map_err(err)?;
        tx.execute(
            "INSERT INTO sipcraft_schema (version, description) VALUES ($1, $2)",
            &[&m.version, &m.description],
        )
        .await
        .map_err(err)?;
        applied.push(m.version);
    }
    tx.commit().await.map_err(SchemaError::Version)?;
    Ok(applied)
}
