//! nfs.conf(5), read as nfs-utils reads it (`support/nfs/conffile.c`, 2.6.2 and HEAD).
//!
//! A small hand parser rather than `rust-ini`: nfs.conf is not quite INI. It has
//! `[section "subsection"]` headers, `include = [-]FILE` relative to the including file and
//! inheriting its section, backslash-newline continuations, comments that end unquoted values
//! (`key = v # c`, `key = v ; c`) but not quoted ones, no backslash escapes, a last line
//! without a newline that is *ignored*, empty values that are dropped, and `$NAME` values. Each
//! of those would need a workaround around an INI crate, and errors would lose their line
//! numbers.
//!
//! The rules, as `conffile.c` implements them (each is a test in `tests/config.rs`):
//!
//! * A file is split into lines at `\n`; a `\` right before the `\n` joins the next line (both
//!   characters become spaces). A last line without a newline is ignored (nfs-utils logs
//!   "last line non-terminated, ignored"); nsmd warns about it.
//! * Leading white space is skipped; empty lines and lines starting with `#` or `;` are
//!   comments.
//! * `[name]` or `[name "subsection"]` starts a section; anything after `]` is ignored. Section
//!   names (and subsections and keys) compare case-insensitively. A header without `]` is
//!   reported, and the lines up to the next header are ignored.
//! * `key = value`: blanks around `=` are dropped. A value starting with `"` or `'` ends at the
//!   next such quote (the rest of the line is ignored; no closing quote: the line is reported
//!   and ignored). An unquoted value ends before the first `#`, then before the first `;`, and
//!   trailing white space is dropped. There are no escapes. An empty value is dropped: it does
//!   not clear an earlier value. A later value for the same section and key replaces the
//!   earlier one, even in another subsection (as nfs-utils 2.6.2 does: `[statd "x"] port`
//!   after `[statd] port` leaves `[statd] port` unset).
//! * Lines outside any section, lines without `=` and assignments without a key are reported
//!   and ignored.
//! * `include = FILE` (in a section; outside one it is ignored like any assignment) reads FILE
//!   at that point: a relative FILE is relative to the directory of the including file. The
//!   included file starts in the including file's current section; its own headers do not
//!   change the section of the lines after the `include`. A missing FILE is reported, unless it
//!   was written `-FILE`. nfs-utils has no loop check and recurses until it crashes; nsmd
//!   stops with [`NfsConfError::IncludeLoop`].
//! * After FILE, the drop-ins `FILE.d/*.conf` are read in `versionsort(3)` order (names
//!   starting with `.`, not ending in `.conf`, or naming a directory are skipped); each starts
//!   outside any section.
//! * A value `$NAME` (after quote removal; the whole rest is the name) is replaced by the
//!   environment variable NAME if it is set and not empty, else by the value of NAME in
//!   `[environment]` (which may itself be `$OTHER`). If neither exists, the key counts as unset
//!   (the earlier value of the key is not used either).
//!
//! Where nsmd differs: a missing main file or `FILE.d` is silently no configuration, as in
//! nfs-utils, but any other I/O error (permission denied, a directory where a file should be) is
//! fatal ([`NfsConfError::Io`]) instead of a log line: nsmd does not start with a configuration
//! other than the one the operator wrote. Upstream HEAD also reads `/usr/etc/nfs.conf` first
//! when FILE is under `/etc/`; Debian's 2.6.2 does not, and neither does nsmd.

use std::cmp::Ordering;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::versionsort::strverscmp;

/// The main configuration file, as compiled into nfs-utils (`NFS_CONFFILE`).
pub const DEFAULT_PATH: &str = "/etc/nfs.conf";

/// Includes nested deeper than this are refused (a loop is caught before that).
const MAX_INCLUDE_DEPTH: usize = 32;

/// A place in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file, as nsmd opened it (a relative include is joined to its includer's directory).
    pub file: PathBuf,
    /// The line number (1-based) where the logical line starts.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// Why a `$NAME` value has no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpandError {
    /// NAME is neither a non-empty environment variable nor a key of `[environment]`.
    Undefined {
        /// The name after `$`.
        name: String,
    },
    /// `[environment]` values refer to each other in a circle (nfs-utils loops forever).
    Loop {
        /// The names, in the order they were followed.
        chain: Vec<String>,
    },
}

impl fmt::Display for ExpandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Undefined { name } => write!(
                f,
                "${name}: {name:?} is neither a (non-empty) environment variable nor a key of \
                 [environment]"
            ),
            Self::Loop { chain } => {
                write!(f, "[environment] values refer to each other in a loop: ")?;
                for (i, n) in chain.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" -> ")?;
                    }
                    write!(f, "${n}")?;
                }
                Ok(())
            }
        }
    }
}

/// One `key = value` assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The section name, lower-cased.
    pub section: String,
    /// The subsection of `[section "subsection"]`, as written.
    pub subsection: Option<String>,
    /// The key, as written.
    pub key: String,
    /// The value after quote and comment removal, before `$NAME` expansion; never empty.
    pub raw: String,
    /// The value after `$NAME` expansion.
    pub value: Result<String, ExpandError>,
    /// Where it was written.
    pub origin: Origin,
}

/// A problem nfs-utils logs and then ignores; nsmd keeps them for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file.
    pub file: PathBuf,
    /// The line, when the problem is on one line.
    pub line: Option<usize>,
    /// What is wrong and what happens instead.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// A configuration that cannot be read at all.
#[derive(Debug)]
pub enum NfsConfError {
    /// A file or directory exists but cannot be read (anything but "not found").
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The `include` line that named it, if any.
        included_at: Option<Origin>,
        /// The error.
        source: io::Error,
    },
    /// A file includes itself, directly or through others.
    IncludeLoop {
        /// The `include` line that closes the loop.
        origin: Origin,
        /// The files being read, outermost first, ending with the one included again.
        chain: Vec<PathBuf>,
    },
    /// Includes nested more than 32 deep.
    IncludeTooDeep {
        /// The `include` line that went too deep.
        origin: Origin,
    },
}

impl fmt::Display for NfsConfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io {
                path,
                included_at: Some(at),
                source,
            } => write!(
                f,
                "{at}: cannot read included file {}: {source}",
                path.display()
            ),
            Self::Io {
                path,
                included_at: None,
                source,
            } => write!(f, "cannot read {}: {source}", path.display()),
            Self::IncludeLoop { origin, chain } => {
                write!(f, "{origin}: include loop: ")?;
                for (i, p) in chain.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" -> ")?;
                    }
                    write!(f, "{}", p.display())?;
                }
                Ok(())
            }
            Self::IncludeTooDeep { origin } => write!(
                f,
                "{origin}: includes nested more than {MAX_INCLUDE_DEPTH} deep"
            ),
        }
    }
}

impl std::error::Error for NfsConfError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The settings of nfs.conf, its includes and its drop-ins, in the order nfs-utils applies
/// them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NfsConf {
    settings: Vec<Setting>,
    /// Indices into `settings` of the live bindings, oldest first (nfs-utils' hash lists).
    bindings: Vec<usize>,
    files: Vec<PathBuf>,
    warnings: Vec<Diagnostic>,
}

impl NfsConf {
    /// No configuration at all (every key unset).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Reads `path` and then `path.d/*.conf`; `$NAME` values look in the process environment.
    /// A missing `path` or `path.d` is not an error.
    pub fn load(path: &Path) -> Result<Self, NfsConfError> {
        Self::load_with_env(path, &|name| std::env::var(name).ok())
    }

    /// [`NfsConf::load`] with `env` in place of the process environment.
    pub fn load_with_env(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, NfsConfError> {
        let mut l = Loader::default();
        match std::fs::read(path) {
            Ok(bytes) => l.parse_file(path, &bytes, Cursor::default())?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(NfsConfError::Io {
                    path: path.to_owned(),
                    included_at: None,
                    source,
                });
            }
        }
        l.drop_ins(path)?;
        Ok(l.finish(env))
    }

    /// Parses `text` as if it were the file `path` (its includes are relative to `path`'s
    /// directory); reads no drop-in directory. For tests and tools.
    pub fn parse_str(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, NfsConfError> {
        let mut l = Loader::default();
        l.parse_file(path, text.as_bytes(), Cursor::default())?;
        Ok(l.finish(env))
    }

    /// The setting that applies to `key` of `[section]` (without subsection): the last one
    /// written for that section and key. Names compare case-insensitively.
    pub fn get(&self, section: &str, key: &str) -> Option<&Setting> {
        self.get_in(section, None, key)
    }

    /// The setting that applies to `key` of `[section "subsection"]`, or of `[section]` when
    /// `subsection` is `None`.
    pub fn get_in(&self, section: &str, subsection: Option<&str>, key: &str) -> Option<&Setting> {
        lookup(&self.settings, &self.bindings, section, subsection, key)
    }

    /// The value of `key` in `[section]` after `$NAME` expansion; `None` if unset or if the
    /// expansion found nothing.
    pub fn get_str(&self, section: &str, key: &str) -> Option<&str> {
        self.get(section, key).and_then(|s| s.value.as_deref().ok())
    }

    /// Every assignment in load order, overridden ones included.
    pub fn settings(&self) -> &[Setting] {
        &self.settings
    }

    /// The files that were read, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// What nfs-utils would have logged and ignored.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }
}

#[derive(Debug, Clone, Default)]
struct Cursor {
    section: Option<String>,
    subsection: Option<String>,
}

#[derive(Debug, Default)]
struct Loader {
    settings: Vec<Setting>,
    files: Vec<PathBuf>,
    warnings: Vec<Diagnostic>,
    /// Canonical paths of the files being read, outermost first; and the paths as opened.
    stack: Vec<(PathBuf, PathBuf)>,
}

/// C's `isspace` in the "C" locale.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// C's `isblank`.
fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t')
}

impl Loader {
    fn warn(&mut self, file: &Path, line: Option<usize>, message: impl Into<String>) {
        self.warnings.push(Diagnostic {
            file: file.to_owned(),
            line,
            message: message.into(),
        });
    }

    fn parse_file(
        &mut self,
        path: &Path,
        bytes: &[u8],
        mut cursor: Cursor,
    ) -> Result<(), NfsConfError> {
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        self.stack.push((canonical, path.to_owned()));
        self.files.push(path.to_owned());
        let r = self.parse_bytes(path, bytes, &mut cursor);
        self.stack.pop();
        r
    }

    fn parse_bytes(
        &mut self,
        path: &Path,
        bytes: &[u8],
        cursor: &mut Cursor,
    ) -> Result<(), NfsConfError> {
        // nfs-utils treats the file as a C string.
        let bytes = match bytes.iter().position(|&b| b == 0) {
            Some(n) => {
                self.warn(
                    path,
                    None,
                    "contains a NUL byte: the rest of the file is ignored (as nfs-utils does)",
                );
                &bytes[..n]
            }
            None => bytes,
        };
        let mut line: Vec<u8> = Vec::new();
        let mut start = 1usize; // physical line where `line` starts
        let mut physical = 1usize;
        for &b in bytes {
            if b == b'\n' {
                physical += 1;
                if line.last() == Some(&b'\\') {
                    // An escaped newline: both become spaces and the line goes on.
                    if let Some(last) = line.last_mut() {
                        *last = b' ';
                    }
                    line.push(b' ');
                    continue;
                }
                let text = String::from_utf8_lossy(&line).into_owned();
                self.parse_line(&text, path, start, cursor)?;
                line.clear();
                start = physical;
            } else {
                line.push(b);
            }
        }
        if !line.is_empty() {
            self.warn(
                path,
                Some(start),
                "the last line does not end with a newline: ignored (as nfs-utils does); \
                 add a newline",
            );
        }
        Ok(())
    }

    fn parse_line(
        &mut self,
        line: &str,
        path: &Path,
        lineno: usize,
        cursor: &mut Cursor,
    ) -> Result<(), NfsConfError> {
        let line = line.trim_start_matches(is_space);
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            return Ok(());
        }
        if line.contains('\u{fffd}') {
            self.warn(
                path,
                Some(lineno),
                "not valid UTF-8: invalid bytes were replaced by U+FFFD",
            );
        }
        let here = Some(lineno);

        if let Some(rest) = line.strip_prefix('[') {
            *cursor = Cursor::default();
            let rest = rest.trim_start_matches(is_blank);
            let Some(close) = rest.find(']') else {
                self.warn(
                    path,
                    here,
                    "section header without ']': the lines up to the next section header are \
                     ignored",
                );
                return Ok(());
            };
            let inner = rest[..close].trim_end_matches(is_blank);
            match inner.find('"') {
                None => cursor.section = Some(inner.to_ascii_lowercase()),
                Some(q) => {
                    let name = inner[..q].trim_end_matches(is_blank);
                    cursor.section = Some(name.to_ascii_lowercase());
                    let after = &inner[q + 1..];
                    match after.find('"') {
                        Some(e) => cursor.subsection = Some(after[..e].to_owned()),
                        None => self.warn(
                            path,
                            here,
                            format!(
                                "section header with an unmatched '\"': the subsection is \
                                 ignored, and the lines below belong to [{name}] (as in \
                                 nfs-utils)"
                            ),
                        ),
                    }
                }
            }
            return Ok(());
        }

        let Some(eq) = line.find('=') else {
            self.warn(
                path,
                here,
                "neither a comment, a section header nor an assignment: ignored",
            );
            return Ok(());
        };
        let Some(section) = cursor.section.clone() else {
            self.warn(
                path,
                here,
                "assignment outside any section (write a [section] header above it): ignored",
            );
            return Ok(());
        };
        let key = line[..eq].trim_end_matches(is_blank);
        let v = line[eq + 1..].trim_start_matches(is_blank);
        let value = if let Some(q @ ('"' | '\'')) = v.chars().next() {
            let body = &v[1..];
            match body.find(q) {
                Some(e) => &body[..e],
                None => {
                    self.warn(path, here, format!("no closing {q} in the value: ignored"));
                    return Ok(());
                }
            }
        } else {
            let v = v.split('#').next().unwrap_or_default();
            let v = v.split(';').next().unwrap_or_default();
            // nfs-utils trims trailing white space but never the first character.
            let t = v.trim_end_matches(is_space);
            match (t.is_empty(), v.chars().next()) {
                (true, Some(c)) => &v[..c.len_utf8()],
                _ => t,
            }
        };
        if key.is_empty() {
            self.warn(path, here, "assignment without a key: ignored");
            return Ok(());
        }
        let origin = Origin {
            file: path.to_owned(),
            line: lineno,
        };
        if key.eq_ignore_ascii_case("include") {
            return self.include(value, origin, cursor);
        }
        if value.is_empty() {
            // conf_set() drops empty values: an earlier value stays.
            return Ok(());
        }
        self.settings.push(Setting {
            section,
            subsection: cursor.subsection.clone(),
            key: key.to_owned(),
            raw: value.to_owned(),
            value: Ok(value.to_owned()),
            origin,
        });
        Ok(())
    }

    fn include(
        &mut self,
        value: &str,
        origin: Origin,
        cursor: &Cursor,
    ) -> Result<(), NfsConfError> {
        let (optional, name) = match value.strip_prefix('-') {
            Some(n) => (true, n),
            None => (false, value),
        };
        if name.is_empty() {
            if !optional {
                self.warn(
                    &origin.file,
                    Some(origin.line),
                    "include without a file name: ignored",
                );
            }
            return Ok(());
        }
        let path = if name.starts_with('/') {
            PathBuf::from(name)
        } else {
            match origin.file.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.join(name),
                _ => Path::new(".").join(name),
            }
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !optional {
                    self.warn(
                        &origin.file,
                        Some(origin.line),
                        format!(
                            "included file {} does not exist: ignored (write include = -FILE \
                             for an optional file)",
                            path.display()
                        ),
                    );
                }
                return Ok(());
            }
            Err(source) => {
                return Err(NfsConfError::Io {
                    path,
                    included_at: Some(origin),
                    source,
                });
            }
        };
        let canonical = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if self.stack.iter().any(|(c, _)| *c == canonical) {
            let mut chain: Vec<PathBuf> = self.stack.iter().map(|(_, p)| p.clone()).collect();
            chain.push(path);
            return Err(NfsConfError::IncludeLoop { origin, chain });
        }
        if self.stack.len() > MAX_INCLUDE_DEPTH {
            return Err(NfsConfError::IncludeTooDeep { origin });
        }
        // The included file starts in our section; its headers do not change ours.
        self.parse_file(&path, &bytes, cursor.clone())
    }

    fn drop_ins(&mut self, main: &Path) -> Result<(), NfsConfError> {
        let mut dir = OsString::from(main.as_os_str());
        dir.push(".d");
        let dir = PathBuf::from(dir);
        let io_err = |path: &Path, source| NfsConfError::Io {
            path: path.to_owned(),
            included_at: None,
            source,
        };
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&dir, e)),
        };
        let mut names = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| io_err(&dir, e))?;
            let name = entry.file_name();
            let b = name.as_bytes();
            if b.starts_with(b".") || b.len() <= ".conf".len() || !b.ends_with(b".conf") {
                continue;
            }
            let ft = entry.file_type().map_err(|e| io_err(&entry.path(), e))?;
            if ft.is_file() || ft.is_symlink() {
                names.push(name);
            }
        }
        names.sort_by(|a, b| match strverscmp(a.as_bytes(), b.as_bytes()) {
            Ordering::Equal => a.cmp(b),
            o => o,
        });
        for name in names {
            let path = dir.join(&name);
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => {}
                Ok(_) => {
                    self.warn(&path, None, "not a regular file: skipped");
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.warn(&path, None, "dangling symbolic link: skipped");
                    continue;
                }
                Err(e) => return Err(io_err(&path, e)),
            }
            let bytes = std::fs::read(&path).map_err(|e| io_err(&path, e))?;
            self.parse_file(&path, &bytes, Cursor::default())?;
        }
        Ok(())
    }

    fn finish(mut self, env: &dyn Fn(&str) -> Option<String>) -> NfsConf {
        // conf_set_now() with override, as Debian's nfs-utils 2.6.2 does it (checked with its
        // nfsconf --dump): a new assignment replaces the binding of the same section and key
        // whatever the subsections, so `[statd "x"] port = 2` after `[statd] port = 1` leaves
        // `[statd] port` unset. (Some later copies of conffile.c compare subsections too.)
        let mut bindings: Vec<usize> = Vec::new();
        for (i, s) in self.settings.iter().enumerate() {
            bindings.retain(|&j| {
                let b = &self.settings[j];
                !(b.section.eq_ignore_ascii_case(&s.section) && b.key.eq_ignore_ascii_case(&s.key))
            });
            bindings.push(i);
        }
        let expanded: Vec<_> = self
            .settings
            .iter()
            .map(|s| expand(s, &self.settings, &bindings, env))
            .collect();
        for (s, v) in self.settings.iter_mut().zip(expanded) {
            s.value = v;
        }
        NfsConf {
            settings: self.settings,
            bindings,
            files: self.files,
            warnings: self.warnings,
        }
    }
}

/// `conf_get_section()` without the `$` step: the newest binding of `key` in `[section]` with
/// exactly this subsection (none for `None`).
fn lookup<'a>(
    settings: &'a [Setting],
    bindings: &[usize],
    section: &str,
    subsection: Option<&str>,
    key: &str,
) -> Option<&'a Setting> {
    bindings.iter().rev().map(|&i| &settings[i]).find(|s| {
        s.section.eq_ignore_ascii_case(section)
            && s.key.eq_ignore_ascii_case(key)
            && match (subsection, &s.subsection) {
                (None, None) => true,
                (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                _ => false,
            }
    })
}

/// `$NAME` expansion as `conf_get_section()` does it: the environment (if set and not empty),
/// else `NAME` in `[environment]` with the setting's subsection (itself expanded); the
/// environment's value is used as is.
fn expand(
    setting: &Setting,
    settings: &[Setting],
    bindings: &[usize],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ExpandError> {
    let mut cur = setting.raw.as_str();
    let mut chain: Vec<String> = Vec::new();
    loop {
        let Some(name) = cur.strip_prefix('$') else {
            return Ok(cur.to_owned());
        };
        if let Some(v) = env(name).filter(|v| !v.is_empty()) {
            return Ok(v);
        }
        if chain.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            chain.push(name.to_owned());
            return Err(ExpandError::Loop { chain });
        }
        chain.push(name.to_owned());
        let found = lookup(
            settings,
            bindings,
            "environment",
            setting.subsection.as_deref(),
            name,
        );
        match found {
            Some(s) => cur = &s.raw,
            None => {
                return Err(ExpandError::Undefined {
                    name: name.to_owned(),
                });
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str) -> NfsConf {
        NfsConf::parse_str(text, Path::new("/nonexistent/nfs.conf"), &no_env).unwrap()
    }

    #[test]
    fn values_quotes_and_comments() {
        let c = parse(concat!(
            "[Statd]\n",
            "  Port = 662 # comment\n",
            "name=\"my host # not a comment\" trailing\n",
            "ha-callout = '/usr/bin/callout;x'\n",
            "outgoing-port = 2020;comment\n",
            "state-directory-path = a#b;c\n",
            "no-notify =\n",
            "debug = \"\"\n",
        ));
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        assert_eq!(c.get_str("statd", "port"), Some("662"));
        assert_eq!(c.get_str("STATD", "PORT"), Some("662"));
        assert_eq!(c.get_str("statd", "name"), Some("my host # not a comment"));
        assert_eq!(c.get_str("statd", "ha-callout"), Some("/usr/bin/callout;x"));
        assert_eq!(c.get_str("statd", "outgoing-port"), Some("2020"));
        assert_eq!(c.get_str("statd", "state-directory-path"), Some("a"));
        assert_eq!(c.get("statd", "no-notify"), None);
        assert_eq!(c.get("statd", "debug"), None);
        assert_eq!(c.get("statd", "port").unwrap().origin.line, 2);
    }

    #[test]
    fn continuation_and_last_line() {
        let c = parse("[a]\nx = 1 \\\n2\ny = 3\nz = 4");
        assert_eq!(c.get_str("a", "x"), Some("1   2"));
        assert_eq!(c.get("a", "y").unwrap().origin.line, 4);
        assert_eq!(c.get("a", "z"), None);
        assert_eq!(c.warnings().len(), 1);
        assert_eq!(c.warnings()[0].line, Some(5));
        assert!(
            c.warnings()[0]
                .to_string()
                .contains("does not end with a newline"),
            "{}",
            c.warnings()[0]
        );
    }

    #[test]
    fn reported_lines() {
        let c = parse(concat!(
            "x = outside\n",
            "[a\n",
            "y = lost\n",
            "[b]\n",
            "just words\n",
            " = novalue\n",
            "q = \"open\n",
            "[c \"sub]\n",
            "k = v\n",
        ));
        let lines: Vec<_> = c.warnings().iter().map(|w| w.line.unwrap()).collect();
        assert_eq!(lines, [1, 2, 3, 5, 6, 7, 8], "{:?}", c.warnings());
        assert!(
            c.warnings()[0]
                .to_string()
                .starts_with("/nonexistent/nfs.conf:1: assignment outside any section")
        );
        assert_eq!(c.get("a", "y"), None);
        // As in nfs-utils, an unmatched quote in a header leaves the plain section.
        assert_eq!(c.get_str("c", "k"), Some("v"));
    }

    #[test]
    fn subsections() {
        let c = parse("[export]\nroot = 2\n[Export \"/srv\"]\nroot = 1\nother = 3\n");
        let s = c.get_in("EXPORT", Some("/SRV"), "root").unwrap();
        assert_eq!(s.value.as_deref(), Ok("1"));
        assert_eq!(s.subsection.as_deref(), Some("/srv"));
        assert_eq!(c.get("export", "other"), None);
        // As in nfs-utils 2.6.2: the subsection's `root` replaced the section's.
        assert_eq!(c.get("export", "root"), None);
        let c = parse("[export \"/srv\"]\nroot = 1\n[export]\nroot = 2\n");
        assert_eq!(c.get_str("export", "root"), Some("2"));
        assert_eq!(c.get_in("export", Some("/srv"), "root"), None);
    }

    #[test]
    fn dollar_expansion() {
        let env = |n: &str| match n {
            "FROM_ENV" => Some("env-value".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let text = concat!(
            "[environment]\n",
            "EMPTY = from-section\n",
            "CHAIN = $LEAF\n",
            "leaf = leaf-value\n",
            "A = $B\n",
            "B = $A\n",
            "[s]\n",
            "e = $FROM_ENV\n",
            "m = $EMPTY\n",
            "c = \"$chain\"\n",
            "u = $NOPE\n",
            "l = $A\n",
            "p = a$b\n",
        );
        let c = NfsConf::parse_str(text, Path::new("x.conf"), &env).unwrap();
        assert_eq!(c.get_str("s", "e"), Some("env-value"));
        assert_eq!(c.get_str("s", "m"), Some("from-section"));
        assert_eq!(c.get_str("s", "c"), Some("leaf-value"));
        assert_eq!(c.get_str("s", "p"), Some("a$b"));
        assert_eq!(
            c.get("s", "u").unwrap().value,
            Err(ExpandError::Undefined {
                name: "NOPE".into()
            })
        );
        let l = &c.get("s", "l").unwrap().value;
        assert!(matches!(l, Err(ExpandError::Loop { .. })), "{l:?}");
        assert_eq!(
            l.as_ref().unwrap_err().to_string(),
            "[environment] values refer to each other in a loop: $A -> $B -> $A"
        );
    }
}
