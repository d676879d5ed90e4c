//! What is wrong with a config file: every problem, each with its key and line.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// One thing wrong with a config file.
///
/// Displays as `FILE:LINE: KEY: MESSAGE`, e.g.
/// `sipcraft.toml:12: listen[1].address: "0.0.0.0:99999" is not a socket address (expected IP:port)`;
/// the line or key is left out when there is none (a file that cannot be read has neither).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the offending key as written in the file, arrays indexed from 0
    /// (`listen[1].address`); empty for a problem with the file as a whole.
    pub key: String,
    /// 1-based line of the key (or of the value, for a bad value), when known.
    pub line: Option<usize>,
    /// What is wrong, and where it helps, what was expected.
    pub message: String,
    /// The config file, as the caller named it.
    pub file: PathBuf,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a config file, in line order; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl std::error::Error for Problems {}

impl Problems {
    pub fn iter(&self) -> std::slice::Iter<'_, Problem> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.0
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl IntoIterator for Problems {
    type Item = Problem;
    type IntoIter = std::vec::IntoIter<Problem>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Problems {
    type Item = &'a Problem;
    type IntoIter = std::slice::Iter<'a, Problem>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Collects problems while a file is checked, finding each key's line.
pub(crate) struct Collector<'a> {
    file: &'a Path,
    lines: &'a HashMap<String, usize>,
    problems: Vec<Problem>,
}

impl<'a> Collector<'a> {
    /// `lines` maps key paths (as in [`Problem::key`]) to their line.
    pub(crate) fn new(file: &'a Path, lines: &'a HashMap<String, usize>) -> Self {
        Collector {
            file,
            lines,
            problems: Vec::new(),
        }
    }

    /// Records a problem at `key`, on the key's line.
    pub(crate) fn at(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let key = key.into();
        let line = self.line(&key);
        self.push(key, line, message);
    }

    /// Records a problem with an explicit line.
    pub(crate) fn push(&mut self, key: String, line: Option<usize>, message: impl Into<String>) {
        self.problems.push(Problem {
            key,
            line,
            message: message.into(),
            file: self.file.to_path_buf(),
        });
    }

    /// The line of `key`, or of its nearest enclosing key that has one.
    pub(crate) fn line(&self, key: &str) -> Option<usize> {
        let mut key = key;
        loop {
            if let Some(line) = self.lines.get(key) {
                return Some(*line);
            }
            key = &key[..key.rfind(['.', '['])?];
        }
    }

    /// Whether a problem was already recorded at `key`, inside it or around it, so a value
    /// dropped for having the wrong type is not reported again as missing.
    pub(crate) fn reported(&self, key: &str) -> bool {
        let within = |inner: &str, outer: &str| {
            inner == outer
                || inner
                    .strip_prefix(outer)
                    .is_some_and(|rest| rest.starts_with(['.', '[']))
        };
        self.problems
            .iter()
            .any(|p| within(&p.key, key) || within(key, &p.key))
    }

    pub(crate) fn len(&self) -> usize {
        self.problems.len()
    }

    /// The problems in line order (those without a line last), or `Ok` if there are none.
    pub(crate) fn finish(mut self) -> Result<(), Problems> {
        if self.problems.is_empty() {
            return Ok(());
        }
        self.problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        Err(Problems(self.problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_forms() {
        let mut p = Problem {
            key: "listen[1].address".into(),
            line: Some(12),
            message: "\"0.0.0.0:99999\" is not a socket address (expected IP:port)".into(),
            file: "sipcraft.toml".into(),
        };
        assert_eq!(
            p.to_string(),
            "sipcraft.toml:12: listen[1].address: \"0.0.0.0:99999\" is not a socket address \
             (expected IP:port)"
        );
        p.line = None;
        p.key.clear();
        p.message = "cannot read: no such file".into();
        assert_eq!(p.to_string(), "sipcraft.toml: cannot read: no such file");
    }

    #[test]
    fn line_falls_back_to_enclosing_key() {
        let lines = HashMap::from([("listen[0]".to_string(), 7)]);
        let c = Collector::new(Path::new("f"), &lines);
        assert_eq!(c.line("listen[0].workers"), Some(7));
        assert_eq!(c.line("server.domain"), None);
    }
}
