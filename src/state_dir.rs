//! The state directory (`-P`).

use std::path::Path;

use anyhow::{Context, Result, bail};

/// Creates `dir` (and its parents) if missing; fails clearly if it exists and is not a
/// directory.
pub fn prepare(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!(
            "state directory {} exists but is not a directory; pass another path with -P",
            dir.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dir)
            .with_context(|| {
                format!(
                    "cannot create the state directory {} (pass a writable path with -P)",
                    dir.display()
                )
            }),
        Err(e) => {
            Err(e).with_context(|| format!("cannot inspect state directory {}", dir.display()))
        }
    }
}
