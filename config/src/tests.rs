//! Pipeline tests: text in, `Config` or every problem out.

use std::path::{Path, PathBuf};

use super::*;

const MINIMAL: &str = r#"
[server]
domain = "pbx.example.test"
runtime_dir = "/run/sipcraft"
state_dir = "/var/lib/sipcraft"

[[listen]]
transport = "udp"
address = "127.0.0.1:5060"
workers = 1

[[extension]]
number = "1001"
password = "x"
"#;

fn origin() -> &'static Path {
    Path::new("/etc/sipcraft/sipcraft.toml")
}

fn problems(text: &str) -> Vec<Problem> {
    parse(text, origin())
        .expect_err("config should be rejected")
        .into_vec()
}

/// The problem at `key`, failing with the full list if there is none.
fn at<'a>(problems: &'a [Problem], key: &str) -> &'a Problem {
    problems
        .iter()
        .find(|p| p.key == key)
        .unwrap_or_else(|| panic!("no problem at {key}: {problems:#?}"))
}

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sipcraft.toml")
}

#[test]
fn shipped_example_is_valid() {
    let config = load(&example_path()).unwrap_or_else(|p| panic!("{p}"));
    let repo =
        std::path::absolute(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")).unwrap();
    assert_eq!(config.server.domain, "pbx.example.test");
    assert_eq!(config.server.runtime_dir, repo.join("../run/runtime"));
    assert_eq!(config.server.state_dir, repo.join("../run/state"));
    let listen: Vec<_> = config
        .listen
        .iter()
        .map(|l| (l.transport, l.address.to_string(), l.workers))
        .collect();
    assert_eq!(
        listen,
        [
            (Transport::Udp, "127.0.0.1:5060".to_string(), 2),
            (Transport::Tcp, "127.0.0.1:5060".to_string(), 1)
        ]
    );
    let numbers: Vec<_> = config
        .extensions
        .iter()
        .map(|e| e.number.as_str())
        .collect();
    assert_eq!(numbers, ["1001", "1002", "1003"]);
    let carol = &config.extensions[2];
    assert!(matches!(&carol.secret, Secret::Ha1 { md5: Some(h), sha256: None } if h.len() == 32));
    assert_eq!(
        carol.challenge_algorithms(&config.registrar),
        [AuthAlgorithm::Md5]
    );
    assert_eq!(
        config.extensions[1].challenge_algorithms(&config.registrar),
        [AuthAlgorithm::Sha256, AuthAlgorithm::Md5]
    );
    assert!(config.database.is_none());
    // The example documents the defaults: keep the two in step.
    assert_eq!(config.registrar, Registrar::default());
    assert_eq!(config.security, Security::default());
    assert_eq!(config.limits, Limits::default());
    assert_eq!(config.proxy, Proxy::default());
    assert_eq!(config.supervisor, Supervisor::default());
    assert_eq!(config.dbagent, DbAgent::default());
    assert!(check_file(&example_path()).is_empty());
}

#[test]
fn minimal_config_gets_defaults() {
    let config = parse(MINIMAL, origin()).unwrap_or_else(|p| panic!("{p}"));
    assert_eq!(config.server.log_level, LogLevel::Info);
    assert!(!config.server.node_name.is_empty());
    assert!(config.extensions[0].enabled);
    assert_eq!(config.extensions[0].auth_algorithms, None);
    assert_eq!(config.registrar, Registrar::default());
    assert_eq!(config.supervisor, Supervisor::default());
}

#[test]
fn unknown_keys_are_rejected_everywhere_with_key_and_line() {
    let text = "bogus_top = 1\n\
                [server]\n\
                domain = \"pbx.example.test\"\n\
                runtime_dir = \"/run/s\"\n\
                state_dir = \"/var/lib/s\"\n\
                colour = \"blue\"\n\
                [[listen]]\n\
                transport = \"udp\"\n\
                address = \"127.0.0.1:5060\"\n\
                port = 5060\n\
                [[extension]]\n\
                number = \"1001\"\n\
                password = \"x\"\n\
                passwd = \"y\"\n";
    let p = problems(text);
    assert_eq!(p.len(), 4, "{p:#?}");
    for (key, line) in [
        ("bogus_top", 1),
        ("server.colour", 6),
        ("listen[0].port", 10),
        ("extension[0].passwd", 14),
    ] {
        let problem = at(&p, key);
        assert_eq!(problem.line, Some(line), "{problem}");
        let name = key.rsplit('.').next().unwrap();
        assert!(
            problem
                .message
                .starts_with(&format!("unknown key `{name}`")),
            "{problem}"
        );
    }
    // Sorted by line, one per line of output.
    let lines: Vec<_> = p.iter().map(|p| p.line).collect();
    assert_eq!(lines, [Some(1), Some(6), Some(10), Some(14)]);
}

#[test]
fn bad_address_reads_well() {
    let text = MINIMAL.replace("127.0.0.1:5060", "0.0.0.0:99999");
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(
        p[0].to_string(),
        "/etc/sipcraft/sipcraft.toml:9: listen[0].address: \"0.0.0.0:99999\" is not a socket \
         address (expected IP:port)"
    );
}

#[test]
fn more_than_255_udp_workers_in_all_are_refused() {
    let two = MINIMAL.replace("workers = 1", "workers = 200")
        + "\n[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.2:5060\"\nworkers = 56\n";
    let p = problems(&two);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        at(&p, "listen")
            .message
            .contains("256 UDP workers in all; at most 255"),
        "{p:#?}"
    );
    let fits = two.replace("workers = 56", "workers = 55");
    assert!(parse(&fits, origin()).is_ok());
}

#[test]
fn duplicate_extension_names_both_lines() {
    let text = format!("{MINIMAL}\n[[extension]]\nnumber = \"1002\"\npassword = \"y\"\n\n[[extension]]\nnumber = \"1001\"\npassword = \"z\"\n");
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:#?}");
    let dup = at(&p, "extension[2].number");
    assert_eq!(dup.line, Some(21));
    assert_eq!(
        dup.message,
        "\"1001\" is already used by extension[0] (line 13)"
    );
}

#[test]
fn every_problem_is_reported_together() {
    let text = r#"
[server]
domain = ""
runtime_dir = "/run/s"
state_dir = 7

[[listen]]
transport = "sctp"
address = "127.0.0.1:5060"
workers = 0

[[listen]]
transport = "udp"
address = "127.0.0.1:5070"

[[listen]]
transport = "udp"
address = "127.0.0.1:5070"
workers = "many"

[[extension]]
number = "1001"
password = "x"
ha1_md5 = "00112233445566778899aabbccddeeff"

[[extension]]
number = "1002"

[[extension]]
number = "1003"
ha1_md5 = "abc"
ha1_sha256 = "zz"

[registrar]
min_expires = 600
max_expires = 60
auth_algorithms = ["MD5", "SHA1"]

[security]
trusted_ips = ["10.0.0.1/8", "nope"]

[supervisor]
crash_loop_restarts = 0
"#;
    let p = problems(text);
    let expect = [
        ("server.domain", 3, "must not be empty"),
        (
            "server.state_dir",
            5,
            "invalid type: integer `7`, expected a string",
        ),
        (
            "listen[0].transport",
            8,
            "\"sctp\" is not a transport (expected udp, tcp, tls, ws or wss)",
        ),
        (
            "listen[0].workers",
            10,
            "0 is out of range (expected 1..=256 or \"auto\")",
        ),
        (
            "listen[2].workers",
            19,
            "invalid value: string \"many\", expected a number of workers or \"auto\"",
        ),
        (
            "listen[2].address",
            18,
            "udp 127.0.0.1:5070 is already listened on by listen[1] (line 12)",
        ),
        (
            "extension[0]",
            21,
            "has both password and ha1_md5/ha1_sha256: give one or the other",
        ),
        ("extension[1]", 26, "has no secret: set password"),
        (
            "extension[2].ha1_md5",
            31,
            "must be 32 hex digits (MD5 of \"number:domain:password\"), found 3 characters",
        ),
        ("extension[2].ha1_sha256", 32, "must be 64 hex digits"),
        (
            "registrar.max_expires",
            36,
            "min_expires (600) is above max_expires (60)",
        ),
        (
            "registrar.auth_algorithms[1]",
            37,
            "\"SHA1\" is not a digest algorithm",
        ),
        (
            "security.trusted_ips[0]",
            40,
            "\"10.0.0.1/8\" has bits set past the prefix length (did you mean 10.0.0.0/8?)",
        ),
        (
            "security.trusted_ips[1]",
            40,
            "\"nope\" is not an IP address",
        ),
        (
            "supervisor.crash_loop_restarts",
            43,
            "0 is out of range (expected 1..=1000)",
        ),
    ];
    for (key, line, start) in expect {
        let problem = at(&p, key);
        assert_eq!(problem.line, Some(line), "{problem}");
        assert!(problem.message.starts_with(start), "{problem}");
    }
    assert_eq!(p.len(), expect.len(), "{p:#?}");
    // A dropped value is not reported again as missing.
    assert!(
        !p.iter().any(|p| p.message.starts_with("missing")),
        "{p:#?}"
    );
    // The error's Display is one problem per line.
    let shown = Problems(p.clone()).to_string();
    assert_eq!(shown.lines().count(), p.len());
}

#[test]
fn missing_things_are_named() {
    let p = problems("[[extension]]\nnumber = \"1\"\npassword = \"x\"\n");
    assert_eq!(
        at(&p, "server").message,
        "missing [server] section (domain, runtime_dir, state_dir)"
    );
    assert!(at(&p, "listen").message.starts_with("no [[listen]] entry"));
    let p = problems("[server]\ndomain = \"d\"\n[[listen]]\naddress = \"127.0.0.1:5060\"\n");
    assert_eq!(at(&p, "server.runtime_dir").line, Some(1));
    assert!(at(&p, "server.state_dir").message.starts_with("missing: "));
    assert!(at(&p, "listen[0].transport")
        .message
        .starts_with("missing: "));
    assert_eq!(p.len(), 3, "{p:#?}");
}

#[test]
fn syntax_error_is_one_problem_with_its_line() {
    let text = format!("{MINIMAL}\n[registrar\nmin_expires = 1\n");
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].line, Some(16));
    assert!(p[0].message.starts_with("TOML syntax error"), "{}", p[0]);
    assert_eq!(p[0].key, "");
    // TOML forbids defining a key twice.
    let p = problems(&format!("{MINIMAL}password = \"again\"\n"));
    assert_eq!((p.len(), p[0].line), (1, Some(15)), "{p:#?}");
}

#[test]
fn auto_workers_is_one_per_cpu() {
    let cpus = std::thread::available_parallelism()
        .unwrap()
        .get()
        .min(MAX_WORKERS);
    let text = MINIMAL.replace("workers = 1", "workers = \"auto\"");
    assert_eq!(parse(&text, origin()).unwrap().listen[0].workers, cpus);
    let text = MINIMAL.replace("workers = 1\n", "");
    assert_eq!(parse(&text, origin()).unwrap().listen[0].workers, cpus);
    let p = problems(&MINIMAL.replace("workers = 1", "workers = 257"));
    assert!(at(&p, "listen[0].workers")
        .message
        .starts_with("257 is out of range"));
}

#[test]
fn relative_dirs_resolve_against_the_file() {
    let text = MINIMAL
        .replace("/run/sipcraft", "run")
        .replace("/var/lib/sipcraft", "./state/../state");
    let config = parse(&text, Path::new("/srv/pbx/conf/sipcraft.toml")).unwrap();
    assert_eq!(config.server.runtime_dir, Path::new("/srv/pbx/conf/run"));
    assert_eq!(
        config.server.state_dir,
        Path::new("/srv/pbx/conf/state/../state")
    );
    // A relative file name is taken from the current directory.
    let config = parse(&text, Path::new("sipcraft.toml")).unwrap();
    assert_eq!(
        config.server.runtime_dir,
        std::env::current_dir().unwrap().join("run")
    );
    // Absolute paths stay as written.
    let config = parse(MINIMAL, Path::new("/srv/pbx/conf/sipcraft.toml")).unwrap();
    assert_eq!(config.server.runtime_dir, Path::new("/run/sipcraft"));
}

#[test]
fn runtime_dir_must_leave_room_for_socket_names() {
    let long = format!("/{}", "r".repeat(MAX_RUNTIME_DIR_BYTES));
    let p = problems(&MINIMAL.replace("/run/sipcraft", &long));
    assert!(at(&p, "server.runtime_dir").message.contains("108"));
}

#[test]
fn database_replaces_file_extensions() {
    let text = format!("{MINIMAL}\n[database]\nurl = \"postgresql://sip@db/sip\"\n");
    let p = problems(&text);
    assert!(at(&p, "extension").message.contains("[database]"), "{p:#?}");
    let without = MINIMAL.split("[[extension]]").next().unwrap().to_string();
    let config = parse(
        &format!("{without}[database]\nurl = \"postgresql://sip@db/sip\"\n"),
        origin(),
    )
    .unwrap();
    let db = config.database.unwrap();
    assert_eq!(db.connect_timeout_ms, Database::DEFAULT_CONNECT_TIMEOUT_MS);
    let p = problems(&format!(
        "{without}[database]\nurl = \"mysql://u:secret@db/sip\"\n"
    ));
    let bad = at(&p, "database.url");
    assert!(!bad.message.contains("secret"), "{bad}");
}

#[test]
fn ha1_only_extension_must_answer_its_own_order() {
    let text = MINIMAL.replace(
        "password = \"x\"",
        "ha1_md5 = \"00112233445566778899AABBCCDDEEFF\"\nauth_algorithms = [\"SHA-256\"]",
    );
    let p = problems(&text);
    assert!(at(&p, "extension[0].auth_algorithms[0]")
        .message
        .contains("needs ha1_sha256"));
    let text = MINIMAL.replace(
        "password = \"x\"",
        "ha1_md5 = \"00112233445566778899AABBCCDDEEFF\"",
    );
    let config = parse(&text, origin()).unwrap();
    let Secret::Ha1 { md5: Some(md5), .. } = &config.extensions[0].secret else {
        panic!("expected an HA1 secret");
    };
    assert_eq!(md5, "00112233445566778899aabbccddeeff");
}

#[test]
fn restart_needed_names_what_cannot_apply_live() {
    let old = parse(MINIMAL, origin()).unwrap();
    let mut new = old.clone();
    new.extensions[0].enabled = false;
    new.registrar.max_expires = 600;
    new.security.ban_time_s = 60;
    new.limits.max_transactions = 1;
    new.proxy.ring_timeout_s = 30;
    new.supervisor.stop_timeout_s = 1;
    new.server.log_level = LogLevel::Debug;
    assert!(restart_needed(&old, &new).is_empty());

    new.listen[0].workers = 3;
    new.listen.push(new.listen[0].clone());
    new.server.runtime_dir = "/elsewhere".into();
    new.server.state_dir = "/elsewhere/state".into();
    new.database = Some(Database {
        url: "postgresql://db/sip".into(),
        connect_timeout_ms: 1,
        statement_timeout_ms: 1,
        password_file: None,
        ca_file: None,
    });
    assert_eq!(
        restart_needed(&old, &new),
        [
            "server.runtime_dir",
            "server.state_dir",
            "listen[0]",
            "listen[1]",
            "database"
        ]
    );
    let mut newer = new.clone();
    newer.database.as_mut().unwrap().url = "postgresql://db2/sip".into();
    newer.database.as_mut().unwrap().statement_timeout_ms = 9;
    assert_eq!(restart_needed(&new, &newer), ["database.url"]);
    let mut rotated = newer.clone();
    rotated.database.as_mut().unwrap().password_file = Some("/etc/sipcraft/db.pw".into());
    assert_eq!(restart_needed(&newer, &rotated), ["database.password_file"]);
    assert_eq!(
        apply_live(&newer, rotated).database.unwrap().password_file,
        None
    );

    // A reload applies the rest and keeps what needs a restart.
    newer.server.domain = "other.example".into();
    let applied = apply_live(&old, newer.clone());
    assert!(restart_needed(&old, &applied).is_empty());
    assert_eq!(applied.extensions, newer.extensions);
    assert_eq!(applied.registrar, newer.registrar);
    assert_eq!(applied.server.log_level, LogLevel::Debug);
    assert_eq!(applied.server.domain, old.server.domain);
    let applied = apply_live(&new, newer.clone());
    assert_eq!(applied.database.unwrap().statement_timeout_ms, 9);
}

#[test]
fn journal_limit_is_a_dbagent_key_checked_with_its_line() {
    // Without [database] too: the registration journal exists stand-alone.
    let config = parse(MINIMAL, origin()).unwrap();
    assert_eq!(config.dbagent.journal_max_bytes, 64 << 20);
    let text = format!("{MINIMAL}\n[dbagent]\njournal_max_bytes = 32768\n");
    let config = parse(&text, origin()).unwrap_or_else(|p| panic!("{p}"));
    assert_eq!(config.dbagent.journal_max_bytes, 32768);
    assert_eq!(config.dbagent_config().journal_max_bytes, 32768);

    let text = format!("{MINIMAL}\n[dbagent]\njournal_max_bytes = 1000\n");
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:#?}");
    let problem = at(&p, "dbagent.journal_max_bytes");
    assert_eq!(problem.line, Some(text.lines().count()), "{problem}");
    assert_eq!(
        problem.message,
        "1000 is out of range (expected 16384..=1099511627776)"
    );
    let text = format!("{MINIMAL}\n[dbagent]\njournal_max_bytes = \"64MiB\"\n");
    let p = problems(&text);
    let problem = at(&p, "dbagent.journal_max_bytes");
    assert_eq!(problem.line, Some(text.lines().count()), "{problem}");
    assert!(
        problem.message.contains("expected a non-negative integer"),
        "{problem}"
    );
    let p = problems(&format!("{MINIMAL}\n[dbagent]\njournal_bytes = 1\n"));
    assert!(
        at(&p, "dbagent.journal_bytes")
            .message
            .starts_with("unknown key `journal_bytes`"),
        "{p:#?}"
    );

    // The journal is opened with it: a reload keeps the running value until a restart.
    let mut new = config.clone();
    new.dbagent.journal_max_bytes = 1 << 30;
    assert_eq!(restart_needed(&config, &new), ["dbagent.journal_max_bytes"]);
    let applied = apply_live(&config, new);
    assert_eq!(applied.dbagent.journal_max_bytes, 32768);
}

#[test]
fn config_and_slices_survive_postcard() {
    let mut config = load(&example_path()).unwrap();
    config.security.trusted_ips = vec!["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()];
    let bytes = postcard::to_allocvec(&config).unwrap();
    assert_eq!(postcard::from_bytes::<Config>(&bytes).unwrap(), config);

    let specs = config.worker_specs();
    let names: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["udp-0", "udp-1", "tcp-0"]);
    let worker = config.worker_config(&specs[2]).unwrap();
    assert_eq!(worker.listen.transport, Transport::Tcp);
    let bytes = postcard::to_allocvec(&worker).unwrap();
    assert_eq!(
        postcard::from_bytes::<WorkerConfig>(&bytes).unwrap(),
        worker
    );
    let agent = config.dbagent_config();
    assert_eq!(agent.extensions.len(), 3);
    let bytes = postcard::to_allocvec(&agent).unwrap();
    assert_eq!(
        postcard::from_bytes::<DbAgentConfig>(&bytes).unwrap(),
        agent
    );
}

#[test]
fn unreadable_file_is_one_problem() {
    let dir = tempfile::tempdir().unwrap();
    let p = check_file(&dir.path().join("absent.toml"));
    assert_eq!(p.len(), 1);
    assert!(
        p[0].message.starts_with("cannot read the config file"),
        "{}",
        p[0]
    );
    let path = dir.path().join("ok.toml");
    std::fs::write(&path, MINIMAL).unwrap();
    assert!(check_file(&path).is_empty());
}

#[test]
fn cross_checks_name_defaults() {
    let p = problems(&format!(
        "{MINIMAL}[supervisor]\nbackoff_initial_ms = 60000\n"
    ));
    assert_eq!(
        at(&p, "supervisor.backoff_initial_ms").message,
        "backoff_initial_ms (60000) is above backoff_max_ms (30000, the default)"
    );
    // An unset default_expires follows the bounds that were set.
    let config = parse(
        &format!("{MINIMAL}[registrar]\nmax_expires = 600\n"),
        origin(),
    )
    .unwrap();
    assert_eq!(config.registrar.default_expires, 600);
}

#[test]
fn wrong_shapes_are_type_problems() {
    let text = MINIMAL.replace("[server]", "[[server]]");
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].key, "server");
    assert_eq!(p[0].message, "invalid type: array, expected a table");
    let p = problems(&format!("{MINIMAL}[proxy]\nring_timeout_s = 1.5\n"));
    assert_eq!(
        at(&p, "proxy.ring_timeout_s").message,
        "invalid type: floating point `1.5`, expected a non-negative integer"
    );
    let p = problems(&format!(
        "{MINIMAL}[registrar]\nauth_algorithms = \"MD5\"\n"
    ));
    assert_eq!(
        at(&p, "registrar.auth_algorithms").message,
        "invalid type: string \"MD5\", expected an array"
    );
}

#[test]
fn runtime_dir_is_read_leniently() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    let broken = MINIMAL
        .replace("/run/sipcraft", "rt")
        .replace("workers = 1", "workers = 0\nbogus = 1");
    std::fs::write(&path, broken).unwrap();
    assert!(!check_file(&path).is_empty());
    assert_eq!(runtime_dir(&path).unwrap(), dir.path().join("rt"));
    assert_eq!(
        runtime_dir(&example_path()).unwrap(),
        load(&example_path()).unwrap().server.runtime_dir
    );
    std::fs::write(&path, "[server]\nruntime_dir = 5\n").unwrap();
    let p = runtime_dir(&path).unwrap_err().into_vec();
    assert_eq!(
        (p[0].key.as_str(), p[0].line),
        ("server.runtime_dir", Some(2))
    );
}

#[test]
fn overlapping_listen_and_unquoted_number() {
    let text = MINIMAL.replace(
        "workers = 1\n",
        "workers = 1\n[[listen]]\ntransport = \"udp\"\naddress = \"0.0.0.0:5060\"\n",
    );
    let text = text.replace("number = \"1001\"", "number = 1001");
    let p = problems(&text);
    assert_eq!(
        at(&p, "listen[1].address").message,
        "udp 0.0.0.0:5060 overlaps udp 127.0.0.1:5060 of listen[0] (line 7): 0.0.0.0 covers \
         every IPv4 address"
    );
    assert_eq!(
        at(&p, "extension[0].number").message,
        "invalid type: integer `1001`, expected a string (put it in quotes)"
    );
}

#[test]
fn database_password_file_is_resolved_read_and_exclusive_with_a_url_password() {
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("sipcraft.toml");
    let without = MINIMAL.split("[[extension]]").next().unwrap().to_string();
    let section = |url: &str, file: &str| {
        format!("{without}[database]\nurl = \"{url}\"\npassword_file = \"{file}\"\n")
    };
    let parse_here = |text: &str| parse(text, &origin);

    // Relative to the config file's directory; only the path is kept.
    std::fs::write(dir.path().join("db.password"), "s3cret\n").unwrap();
    let config = parse_here(&section("postgresql://sip@db/sip", "db.password")).unwrap();
    let file = config.database.unwrap().password_file.unwrap();
    assert_eq!(file, dir.path().join("db.password"));
    assert_eq!(read_password_file(&file).unwrap(), "s3cret");

    // Missing, empty: the line of the key and what is wrong, never the content.
    let problems = |text: &str| parse_here(text).unwrap_err().into_vec();
    let p = problems(&section("postgresql://sip@db/sip", "nowhere.password"));
    let missing = at(&p, "database.password_file");
    assert!(missing.message.contains("cannot read"), "{missing}");
    assert_eq!(
        missing.line,
        Some(without.lines().count() + 3),
        "{missing:?}"
    );
    std::fs::write(dir.path().join("empty.password"), "\n").unwrap();
    let p = problems(&section("postgresql://sip@db/sip", "empty.password"));
    assert!(at(&p, "database.password_file").message.contains("empty"));
    std::fs::write(dir.path().join("big.password"), "x".repeat(5000)).unwrap();
    let p = problems(&section("postgresql://sip@db/sip", "big.password"));
    let big = at(&p, "database.password_file");
    assert!(big.message.contains("longer"), "{big}");
    assert!(!big.message.contains("xxxx"), "{big}");

    // Both a password in the URL and a password file: which one would win is a guess.
    let p = problems(&section("postgresql://sip:inline@db/sip", "db.password"));
    let both = at(&p, "database.password_file");
    assert!(both.message.contains("database.url"), "{both}");
    assert!(!both.message.contains("inline"), "{both}");
}

#[test]
fn database_ca_file_must_hold_certificates_and_agree_with_sslmode() {
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("sipcraft.toml");
    let without = MINIMAL.split("[[extension]]").next().unwrap().to_string();
    let section = |url: &str, ca: Option<&str>| {
        let ca = ca
            .map(|f| format!("ca_file = \"{f}\"\n"))
            .unwrap_or_default();
        format!("{without}[database]\nurl = \"{url}\"\n{ca}")
    };
    let problems = |text: &str| parse(text, &origin).unwrap_err().into_vec();
    std::fs::write(
        dir.path().join("ca.pem"),
        "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "no PEM in here\n").unwrap();

    let config = parse(&section("postgresql://sip@db/sip", Some("ca.pem")), &origin).unwrap();
    assert_eq!(
        config.database.unwrap().ca_file,
        Some(dir.path().join("ca.pem"))
    );
    let p = problems(&section("postgresql://sip@db/sip", Some("notes.txt")));
    assert!(at(&p, "database.ca_file")
        .message
        .contains("no PEM certificate"));
    let p = problems(&section("postgresql://sip@db/sip", Some("missing.pem")));
    assert!(at(&p, "database.ca_file").message.contains("cannot read"));
    // TLS asked for without an authority to verify the server with, and the reverse.
    let p = problems(&section("postgresql://sip@db/sip?sslmode=require", None));
    assert!(at(&p, "database.url").message.contains("database.ca_file"));
    let p = problems(&section(
        "postgresql://sip@db/sip?sslmode=disable",
        Some("ca.pem"),
    ));
    assert!(at(&p, "database.ca_file")
        .message
        .contains("sslmode=disable"));
}
