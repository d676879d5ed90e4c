//! Packaging and operations, through the real Makefile targets: `make install` lays out the
//! tree, `make dist` builds offline from a clean directory, `make deb` makes a package that
//! installs into a throwaway root and passes lintian, the systemd unit verifies clean, and
//! the container image's entrypoint runs as PID 1, answers SIP and stops cleanly.
//!
//! The targets are given the binary cargo built for the tests (`BIN=`), so no `make` here
//! runs cargo on the checkout while `cargo test` holds its build directory; the dist build
//! uses its own target directory and an empty CARGO_HOME. Needs root (dpkg --root, unshare)
//! and the programs `scripts/test-deps.sh` installs.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{alive, free_port, wait_for, BIN};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` to completion with no standard input; panics with its output unless it succeeds.
fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", text(&out));
    out
}

/// `make -C <repo> ARGS`.
fn make(args: &[&str]) -> Output {
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(REPO)
        .arg("--no-print-directory")
        .args(args);
    without_jobserver(&mut cmd);
    run(&mut cmd)
}

/// Leaves out a make or cargo jobserver this test may have inherited from `make test`.
fn without_jobserver(cmd: &mut Command) -> &mut Command {
    for var in ["MAKEFLAGS", "MFLAGS", "MAKELEVEL", "CARGO_MAKEFLAGS"] {
        cmd.env_remove(var);
    }
    cmd
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn assert_line(file: &str, what: &str, line: &str) {
    assert!(
        file.lines().any(|l| l.trim() == line),
        "{what} has no line `{line}`:\n{file}"
    );
}

fn config_check(config: &Path) {
    run(Command::new(BIN).args(["config", "check"]).arg(config));
}

#[test]
fn make_install_lays_out_the_tree_and_keeps_a_changed_config() {
    let dest = tempdir("sipcraft-install");
    let d = dest.path();
    let destdir = format!("DESTDIR={}", d.display());
    let bin_arg = format!("BIN={BIN}");
    make(&["install", &destdir, &bin_arg]);

    // PREFIX defaults to /usr/local.
    let bin = d.join("usr/local/bin/sipcraft");
    assert_eq!(mode(&bin), 0o755);
    let out = run(Command::new(&bin).arg("--version"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("sipcraft {VERSION}")
    );

    let config = d.join("etc/sipcraft/sipcraft.toml");
    let original = read(&config);
    assert_eq!(mode(&config), 0o640, "the configuration holds passwords");
    run(Command::new(&bin).args(["config", "check"]).arg(&config));
    for line in [
        r#"runtime_dir = "/run/sipcraft""#,
        r#"state_dir = "/var/lib/sipcraft""#,
        r#"transport = "udp""#,
        r#"transport = "tcp""#,
        r#"address = "0.0.0.0:5060""#,
    ] {
        assert_line(&original, "the production configuration", line);
    }

    let unit = read(&d.join("usr/local/lib/systemd/system/sipcraft.service"));
    assert_line(
        &unit,
        "the installed unit",
        "ExecStart=/usr/local/bin/sipcraft run -c /etc/sipcraft/sipcraft.toml",
    );
    assert!(
        !unit.contains("/usr/bin/sipcraft"),
        "every path follows PREFIX:\n{unit}"
    );
    assert!(d.join("usr/local/share/man/man1/sipcraft.1").is_file());
    assert!(read(&d.join("usr/local/lib/sysusers.d/sipcraft.conf")).contains("u sipcraft "));
    assert_eq!(mode(&d.join("var/lib/sipcraft")), 0o750);
    assert_eq!(mode(&d.join("run/sipcraft")), 0o700);

    // A second install keeps the administrator's configuration.
    let changed = original.replace("sip.example.com", "pbx.example.net");
    assert_ne!(changed, original);
    std::fs::write(&config, &changed).unwrap();
    let out = make(&["install", &destdir, &bin_arg]);
    assert_eq!(
        read(&config),
        changed,
        "make install overwrote the configuration"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("keeping"),
        "{}",
        text(&out)
    );
}

#[test]
fn systemd_unit_verifies_clean_and_keeps_its_sandbox() {
    // The unit as `make install PREFIX=/usr` lays it out: the package's paths, so the file is
    // the checked-in one unchanged. `verify` checks that ExecStart= and friends exist and that
    // the man page in Documentation= is there, so the copy it reads points into the staged tree.
    let dest = tempdir("sipcraft-unit");
    let d = dest.path();
    make(&[
        "install",
        &format!("DESTDIR={}", d.display()),
        "PREFIX=/usr",
        &format!("BIN={BIN}"),
    ]);
    let unit = read(&d.join("usr/lib/systemd/system/sipcraft.service"));
    assert_eq!(
        unit,
        read(&Path::new(REPO).join("systemd/sipcraft.service"))
    );

    let staged_bin = d.join("usr/bin/sipcraft");
    let check_dir = d.join("verify");
    std::fs::create_dir(&check_dir).unwrap();
    let check_unit = check_dir.join("sipcraft.service");
    std::fs::write(
        &check_unit,
        unit.replace("/usr/bin/sipcraft", &staged_bin.display().to_string()),
    )
    .unwrap();

    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(&check_unit)
        .env("MANPATH", d.join("usr/share/man")));
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze verify is not clean: {}",
        text(&out)
    );
    // Exposure 1.4 ("OK") today; fail when a change loosens the sandbox past 2.0.
    run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(&check_unit));

    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "ExecStartPre=/usr/bin/sipcraft config check /etc/sipcraft/sipcraft.toml",
        "ExecStart=/usr/bin/sipcraft run -c /etc/sipcraft/sipcraft.toml",
        "ExecReload=/usr/bin/sipcraft ctl -c /etc/sipcraft/sipcraft.toml reload",
        "WatchdogSec=30",
        "Restart=on-failure",
        "KillMode=mixed",
        "User=sipcraft",
        "Group=sipcraft",
        "StateDirectory=sipcraft",
        "RuntimeDirectory=sipcraft",
        "RuntimeDirectoryMode=0700",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    ] {
        assert_line(&unit, "systemd/sipcraft.service", line);
    }
    // Above the supervisor's own stop deadline ([supervisor] stop_timeout_s = 5).
    let stop_s: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec=")
        .parse()
        .expect("TimeoutStopSec in seconds");
    assert!((6..=30).contains(&stop_s), "TimeoutStopSec={stop_s}");
    // The ExecStartPre= command passes on the shipped configuration.
    config_check(&Path::new(REPO).join("packaging/sipcraft.toml"));
}

/// Slow: vendors every crate and builds the whole workspace from the tarball (about 1–2
/// minutes of the suite on 2 cores).
#[test]
fn make_dist_tarball_builds_offline_from_a_clean_directory() {
    let started = Instant::now();
    let work = tempdir("sipcraft-dist");
    let w = work.path();
    let out_dir = w.join("out");
    make(&["dist", &format!("DISTDIR={}", out_dir.display())]);
    let tarball = out_dir.join(format!("sipcraft-{VERSION}.tar.gz"));
    assert!(tarball.is_file(), "no {}", tarball.display());

    let unpacked = w.join("empty");
    std::fs::create_dir(&unpacked).unwrap();
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&unpacked));
    let root = unpacked.join(format!("sipcraft-{VERSION}"));
    let cargo_config = read(&root.join(".cargo/config.toml"));
    assert!(
        cargo_config.contains(r#"replace-with = "vendored-sources""#),
        "{cargo_config}"
    );
    assert!(root.join("vendor").is_dir() && root.join("Cargo.lock").is_file());
    assert!(!root.join("target").exists(), "build output in the tarball");

    // No network (--offline), the lock file as shipped (--frozen), and an empty CARGO_HOME:
    // nothing may come from this machine's registry cache.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = w.join("target");
    run(without_jobserver(&mut Command::new(cargo))
        .args(["build", "--offline", "--frozen"])
        .current_dir(&root)
        .env("CARGO_HOME", w.join("cargo-home"))
        .env("CARGO_TARGET_DIR", &target));
    let out = run(Command::new(target.join("debug/sipcraft")).arg("--version"));
    assert!(String::from_utf8_lossy(&out.stdout).contains(VERSION));
    eprintln!(
        "make dist and an offline build took {:?}",
        started.elapsed()
    );
}

/// A root for `dpkg --root`: an empty package database and account files with root alone.
fn throwaway_root(root: &Path) {
    for dir in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "etc",
        "usr/sbin",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    for (file, content, mode) in [
        ("var/lib/dpkg/status", "", 0o644),
        ("var/lib/dpkg/available", "", 0o644),
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644),
        ("etc/group", "root:x:0:\n", 0o644),
        ("etc/shadow", "root:*:19000:0:99999:7:::\n", 0o640),
        ("etc/gshadow", "root:*::\n", 0o640),
        ("usr/sbin/nologin", "#!/bin/sh\nexit 1\n", 0o755),
    ] {
        let path = root.join(file);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// `dpkg --root`, running the maintainer scripts outside a chroot with DPKG_ROOT set (the
/// root has no shell of its own); dependencies (libc6, adduser) are not in the empty root.
fn dpkg_in(root: &Path, args: &[&str]) -> Output {
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-depends"])
        .args(args))
}

fn account(root: &Path, file: &str, name: &str) -> Option<u32> {
    read(&root.join("etc").join(file)).lines().find_map(|l| {
        let fields: Vec<&str> = l.split(':').collect();
        (fields[0] == name).then(|| fields[2].parse().unwrap())
    })
}

#[test]
fn make_deb_lists_its_files_installs_into_a_throwaway_root_and_passes_lintian() {
    let work = tempdir("sipcraft-deb");
    let w = work.path();
    let out_dir = w.join("out");
    make(&[
        "deb",
        &format!("BIN={BIN}"),
        &format!("DISTDIR={}", out_dir.display()),
    ]);
    let debs: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    let deb = debs[0].to_str().unwrap();
    assert!(deb.contains(&format!("sipcraft_{VERSION}-")), "{deb}");

    let contents = run(Command::new("dpkg-deb").args(["--contents", deb]));
    let contents = String::from_utf8_lossy(&contents.stdout);
    for path in [
        "./usr/bin/sipcraft",
        "./lib/systemd/system/sipcraft.service",
        "./etc/sipcraft/sipcraft.toml",
        "./usr/share/man/man1/sipcraft.1.gz",
        "./usr/share/doc/sipcraft/copyright",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(&format!(" {path}"))),
            "{path} is not in the package:\n{contents}"
        );
    }
    let conffiles = run(Command::new("dpkg-deb").args(["--info", deb, "conffiles"]));
    assert_eq!(
        String::from_utf8_lossy(&conffiles.stdout).trim(),
        "/etc/sipcraft/sipcraft.toml"
    );
    let lintian = run(Command::new("lintian").args(["--fail-on", "error,warning", deb]));
    assert!(
        !String::from_utf8_lossy(&lintian.stdout)
            .lines()
            .any(|l| l.starts_with("E:") || l.starts_with("W:")),
        "{}",
        text(&lintian)
    );

    // Install: files in place, the service user created by the postinst, and it owns state.
    let root = w.join("root");
    throwaway_root(&root);
    dpkg_in(&root, &["--install", deb]);
    let out = run(Command::new(root.join("usr/bin/sipcraft")).arg("--version"));
    assert!(String::from_utf8_lossy(&out.stdout).contains(VERSION));
    let uid = account(&root, "passwd", "sipcraft").expect("postinst created the user");
    let gid = account(&root, "group", "sipcraft").expect("postinst created the group");
    assert!(uid < 1000, "a system user: uid {uid}");
    let state = std::fs::metadata(root.join("var/lib/sipcraft")).unwrap();
    assert_eq!((state.uid(), state.gid()), (uid, gid));
    let config = root.join("etc/sipcraft/sipcraft.toml");
    let meta = std::fs::metadata(&config).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, gid));
    assert_eq!(mode(&config), 0o640);
    config_check(&config);
    assert!(root.join("lib/systemd/system/sipcraft.service").is_file());

    // Reinstalling keeps a changed conffile (and asks nothing: stdin is closed).
    let changed = read(&config).replace("sip.example.com", "pbx.example.net");
    std::fs::write(&config, &changed).unwrap();
    dpkg_in(&root, &["--install", deb]);
    assert_eq!(read(&config), changed);
    assert_eq!(account(&root, "passwd", "sipcraft"), Some(uid));

    // Purge: files, state, configuration and the user are gone.
    dpkg_in(&root, &["--purge", "sipcraft"]);
    for gone in [
        "usr/bin/sipcraft",
        "lib/systemd/system/sipcraft.service",
        "etc/sipcraft",
        "var/lib/sipcraft",
    ] {
        assert!(!root.join(gone).exists(), "{gone} left after purge");
    }
    assert_eq!(account(&root, "passwd", "sipcraft"), None);
    assert_eq!(account(&root, "group", "sipcraft"), None);
}

/// The JSON array of a Dockerfile instruction in exec form, e.g. `ENTRYPOINT ["a", "b"]`.
fn exec_form(dockerfile: &str, instruction: &str) -> Vec<String> {
    let line = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("{instruction} ")))
        .unwrap_or_else(|| panic!("no {instruction} in the Dockerfile"));
    serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("{instruction} is not in exec form ({e}): {line}"))
}

#[test]
fn image_files_hold_together() {
    let repo = Path::new(REPO);
    let dockerfile = read(&repo.join("Dockerfile"));
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    assert_eq!(stages.last().unwrap().trim(), "FROM debian:bookworm-slim");
    assert_eq!(exec_form(&dockerfile, "ENTRYPOINT"), ["sipcraft", "run"]);
    assert_eq!(
        exec_form(&dockerfile, "CMD"),
        ["-c", "/etc/sipcraft/sipcraft.toml"]
    );
    assert_line(&dockerfile, "Dockerfile", "USER sipcraft:sipcraft");
    assert_line(&dockerfile, "Dockerfile", r#"VOLUME ["/var/lib/sipcraft"]"#);
    assert_line(
        &dockerfile,
        "Dockerfile",
        "EXPOSE 5060/udp 5060/tcp 5061/tcp",
    );
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains(r#""ctl", "-c""#));
    assert_line(
        &dockerfile,
        "Dockerfile",
        "COPY docker/sipcraft.toml /etc/sipcraft/sipcraft.toml",
    );

    // The configurations shipped in the image and used by compose.yaml are valid.
    config_check(&repo.join("docker/sipcraft.toml"));
    let with_db = repo.join("docker/sipcraft-compose.toml");
    config_check(&with_db);
    assert!(read(&with_db).contains("@postgres:5432/"));
    let compose = read(&repo.join("compose.yaml"));
    for needle in [
        "  postgres:",
        "  sipcraft:",
        "./docker/sipcraft-compose.toml:/etc/sipcraft/sipcraft.toml:ro",
        "5060:5060/udp",
    ] {
        assert!(compose.contains(needle), "compose.yaml lacks {needle}");
    }

    // No Docker engine here: `make docker` is checked for the command it would run.
    let out = make(&["-n", "docker"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("build -t sipcraft:{VERSION} ")),
        "{}",
        text(&out)
    );
}

/// Parent pid and command name of a process, from /proc.
fn stat(pid: u32) -> Option<(u32, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    let ppid = text[close + 2..].split_whitespace().nth(1)?.parse().ok()?;
    Some((ppid, comm))
}

fn children_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|(ppid, _)| ppid == parent))
        .collect()
}

/// The `unshare` process holding the container; killing it kills everything inside.
struct Container(Child);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends a well-formed OPTIONS from `socket` to `to`, retransmitting as a UDP client does
/// (timer E: 500 ms, doubling), until a response to it arrives or `within` has passed.
fn options_ping(socket: &UdpSocket, to: SocketAddr, within: Duration) -> String {
    let local = socket.local_addr().unwrap();
    let nonce = format!("{}{}", std::process::id(), local.port());
    let call_id = format!("pkg-{nonce}@127.0.0.1");
    let request = format!(
        "OPTIONS sip:{to} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-pkg-{nonce};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@{local}>;tag=pkg{nonce}\r\n\
         To: <sip:{to}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Contact: <sip:probe@{local}>\r\n\
         Accept: application/sdp\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let deadline = Instant::now() + within;
    let mut interval = Duration::from_millis(500);
    let mut buf = [0u8; 65535];
    while Instant::now() < deadline {
        socket.send_to(request.as_bytes(), to).unwrap();
        let resend_at = (Instant::now() + interval).min(deadline);
        while let Some(left) = resend_at.checked_duration_since(Instant::now()) {
            if left.is_zero() {
                break;
            }
            socket.set_read_timeout(Some(left)).unwrap();
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                break;
            };
            let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
            if from == to && reply.starts_with("SIP/2.0 ") && reply.contains(&call_id) {
                return reply;
            }
        }
        interval = (interval * 2).min(Duration::from_secs(4));
    }
    panic!("no response to OPTIONS from {to} within {within:?}");
}

#[test]
fn container_entrypoint_as_pid_1_answers_options_and_stops_on_sigterm() {
    let repo = Path::new(REPO);
    let dockerfile = read(&repo.join("Dockerfile"));
    let entrypoint = exec_form(&dockerfile, "ENTRYPOINT");
    let cmd = exec_form(&dockerfile, "CMD");
    assert_eq!(entrypoint[0], "sipcraft");

    // The image's own configuration, moved to this machine: a free loopback port instead of
    // 0.0.0.0:5060, and directories of the test's own instead of the image's.
    let dir = tempdir("sipcraft-container");
    let port = free_port();
    let image_config = read(&repo.join("docker/sipcraft.toml"));
    let mut config_text = image_config.clone();
    for (from, to) in [
        (
            "\"0.0.0.0:5060\"".to_owned(),
            format!("\"127.0.0.1:{port}\""),
        ),
        (
            "\"/run/sipcraft\"".to_owned(),
            format!("\"{}\"", dir.path().join("rt").display()),
        ),
        (
            "\"/var/lib/sipcraft\"".to_owned(),
            format!("\"{}\"", dir.path().join("state").display()),
        ),
    ] {
        assert!(
            config_text.contains(&from),
            "docker/sipcraft.toml has no {from}"
        );
        config_text = config_text.replace(&from, &to);
    }
    let config = dir.path().join("sipcraft.toml");
    std::fs::write(&config, config_text).unwrap();
    let args: Vec<String> = entrypoint[1..]
        .iter()
        .chain(&cmd)
        .map(|a| {
            if a == "/etc/sipcraft/sipcraft.toml" {
                config.display().to_string()
            } else {
                a.clone()
            }
        })
        .collect();

    let log = dir.path().join("sipcraft.log");
    let mut container = Container(
        Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .arg(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("unshare"),
    );
    let ctl_status = || -> Option<serde_json::Value> {
        let out = Command::new(BIN)
            .args(["ctl", "-c"])
            .arg(&config)
            .args(["status", "--json"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())?
    };
    let status = wait_for("every child ready", Duration::from_secs(20), || {
        let status = ctl_status()?;
        let children = status["children"].as_array()?;
        (children.len() >= 3 && children.iter().all(|c| c["state"] == "ready")).then_some(status)
    });
    assert_eq!(status["supervisor_pid"], 1, "the supervisor is PID 1");

    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let reply = options_ping(&socket, to, Duration::from_secs(10));
    assert!(reply.contains("CSeq: 1 OPTIONS"), "{reply}");

    // `docker stop`: SIGTERM to PID 1, seen from outside the namespace.
    let unshare = container.0.id();
    let supervisor = wait_for(
        "the supervisor under unshare",
        Duration::from_secs(5),
        || {
            children_of(unshare)
                .into_iter()
                .find(|&p| stat(p).is_some_and(|(_, comm)| comm == "sipcraft"))
        },
    );
    let family = children_of(supervisor);
    assert!(family.len() >= 3, "children of PID 1: {family:?}");
    kill(Pid::from_raw(supervisor as i32), Signal::SIGTERM).unwrap();
    let exit = wait_for("the container to stop", Duration::from_secs(10), || {
        container.0.try_wait().unwrap()
    });
    assert!(
        exit.success(),
        "exit status {exit:?}; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    for pid in family {
        assert!(!alive(pid), "child {pid} outlived the supervisor");
    }
}
