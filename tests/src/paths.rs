//! Where the repository, its scripts and the build output are.

use std::path::{Path, PathBuf};

/// The repository root (the parent of this crate's directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the repository")
        .to_path_buf()
}

/// The repository's `scripts/` directory.
pub fn scripts_dir() -> PathBuf {
    repo_root().join("scripts")
}

/// The cargo profile directory the running test binary was built into
/// (e.g. `target/debug`): test binaries live in `<profile dir>/deps/`.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().ok();
    match exe.as_deref().and_then(Path::parent) {
        Some(dir) if dir.file_name().is_some_and(|n| n == "deps") => {
            dir.parent().unwrap_or(dir).to_path_buf()
        }
        Some(dir) => dir.to_path_buf(),
        None => repo_root().join("target").join("debug"),
    }
}
