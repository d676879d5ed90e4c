//! sipcraft configuration.
//!
//! The pipeline is: TOML text -> a tree that remembers every key's line (module `tree`) ->
//! file structs that reject unknown keys (`file`) -> one validated [`Config`] (`validate`) ->
//! the slice each process role needs ([`WorkerConfig`], [`DbAgentConfig`]). The supervisor is
//! the only process that reads the file; children receive their slice over the bus, so every
//! process of one generation runs on the same validated configuration.
//!
//! Checking never stops at the first problem: a key with the wrong type or an unknown name is
//! reported and dropped, and checking goes on, so `sipcraft config check` lists everything
//! wrong with a file at once, each with its key and line ([`Problem`]). Only a TOML syntax
//! error, after which nothing can be read reliably, is reported alone.
//!
//! The file format is documented by the shipped example, `examples/sipcraft.toml`.

#![forbid(unsafe_code)]

mod de;
mod file;
mod model;
mod problem;
mod reload;
mod sections;
mod slice;
mod tree;
mod validate;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use model::{
    AuthAlgorithm, Config, Database, Extension, Listen, LogLevel, Secret, Server, TlsFiles,
    Transport,
};
pub use problem::{Problem, Problems};
pub use reload::{apply_live, restart_needed};
pub use sections::{DbAgent, IpNet, IpNetError, Limits, Proxy, Registrar, Security, Supervisor};
pub use slice::{DbAgentConfig, WorkerConfig, WorkerSpec};
pub use validate::{MAX_RUNTIME_DIR_BYTES, MAX_WORKERS};

use crate::problem::Collector;

/// Checking stops after this many problems: past it, the file is more wrong than right.
pub const MAX_PROBLEMS: usize = 200;

/// Reads and validates the config file at `path`.
///
/// Relative `server.runtime_dir` and `server.state_dir` are resolved against the directory
/// of `path` (made absolute from the current directory if `path` is relative), so a config
/// works the same from any working directory.
pub fn load(path: &Path) -> Result<Config, Problems> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Problems(vec![Problem {
            key: String::new(),
            line: None,
            message: format!("cannot read the config file: {e}"),
            file: path.to_path_buf(),
        }])
    })?;
    parse(&text, path)
}

/// Validates config text; `origin` is the file it came from, named in problems and used to
/// resolve relative directories as [`load`] does.
pub fn parse(text: &str, origin: &Path) -> Result<Config, Problems> {
    let mut root = tree::parse(text).map_err(|e| {
        Problems(vec![Problem {
            key: String::new(),
            line: e.line,
            message: format!("TOML syntax error: {}", e.message),
            file: origin.to_path_buf(),
        }])
    })?;
    let lines = tree::line_map(&root);
    let mut c = Collector::new(origin, &lines);
    // Fill the file structs; each failing key is reported, dropped, and the rest tried again.
    let file = loop {
        match file::FileConfig::deserialize(de::NodeDe(&root)) {
            Ok(file) => break file,
            Err(e) => {
                c.push(tree::path_string(&e.path), e.line, e.friendly_message());
                if c.len() >= MAX_PROBLEMS {
                    c.push(
                        String::new(),
                        None,
                        format!("too many problems, stopped after {MAX_PROBLEMS}"),
                    );
                    return Err(c.finish().expect_err("problems were recorded"));
                }
                if !tree::remove(&mut root, &e.path) {
                    return Err(c.finish().expect_err("problems were recorded"));
                }
            }
        }
    };
    // The tree is not needed past this point (problems find their lines in `lines`): freed
    // now, its memory serves the validated config instead of adding to the peak.
    drop(root);
    let config = validate::validate(file, &base_dir(origin), &mut c);
    c.finish().map(|()| config)
}

/// The longest password file read, in bytes: a password is one short line.
pub const MAX_PASSWORD_FILE_BYTES: u64 = 4096;

/// The password in `path` (`[database] password_file`): its first line, without the line
/// end. For the validation and for the dbagent, which reads it at every connection attempt.
/// The error says what is wrong and never contains the file's content.
pub fn read_password_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(MAX_PASSWORD_FILE_BYTES + 1)
                .read_to_string(&mut text)
        })
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_PASSWORD_FILE_BYTES {
        return Err(format!(
            "{} is longer than {MAX_PASSWORD_FILE_BYTES} bytes; it should hold one password",
            path.display()
        ));
    }
    let password = text.lines().next().unwrap_or_default();
    if password.is_empty() {
        return Err(format!(
            "{} is empty; its first line is the password",
            path.display()
        ));
    }
    Ok(password.to_owned())
}

/// Every problem in the file at `path`; empty means it is valid. For `sipcraft config check`.
pub fn check_file(path: &Path) -> Vec<Problem> {
    load(path).err().map(Problems::into_vec).unwrap_or_default()
}

/// `server.runtime_dir` alone, resolved as [`load`] resolves it, read leniently: for
/// `sipcraft ctl`, which must still reach a running server after someone has broken another
/// part of the file (that is exactly when `ctl reload` has to report the problems). Fails
/// only if the file cannot be read, is not TOML, or has no string `server.runtime_dir`.
pub fn runtime_dir(path: &Path) -> Result<PathBuf, Problems> {
    let one = |line: Option<usize>, key: &str, message: String| {
        Problems(vec![Problem {
            key: key.to_string(),
            line,
            message,
            file: path.to_path_buf(),
        }])
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| one(None, "", format!("cannot read the config file: {e}")))?;
    let root = tree::parse(&text)
        .map_err(|e| one(e.line, "", format!("TOML syntax error: {}", e.message)))?;
    match root
        .get("server")
        .and_then(|server| server.get("runtime_dir"))
    {
        Some(tree::Node {
            value: tree::Value::Str(dir),
            ..
        }) if !dir.trim().is_empty() => Ok(validate::resolve(&base_dir(path), dir)),
        Some(node) => Err(one(
            node.line,
            "server.runtime_dir",
            "must be a directory path".to_string(),
        )),
        None => Err(one(None, "server.runtime_dir", "missing".to_string())),
    }
}

/// The absolute directory holding `origin`.
fn base_dir(origin: &Path) -> PathBuf {
    let absolute = std::path::absolute(origin).unwrap_or_else(|_| origin.to_path_buf());
    absolute
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}
