//! scripts/package: the shipped binary without its debug info, the symbols
//! in a tarball of their own, and a glibc the hosts have.

use std::{path::Path, process::Command};

use tidepool_tests::Tidepool;

fn package(binary: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/package"))
        .arg("--binary")
        .arg(binary)
        .arg("--output")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// Section names of an ELF file.
fn sections(file: &Path) -> String {
    let out = Command::new("readelf")
        .args(["-S", "-W"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn untar(tarball: &str, into: &Path) {
    let st = Command::new("tar")
        .args(["-xzf", tarball, "-C"])
        .arg(into)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn the_shipped_binary_runs_without_its_debug_info_which_ships_apart() {
    let binary = Tidepool::binary().unwrap();
    assert!(
        sections(&binary).contains(".debug_line"),
        "the built binary has line tables to split out"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = package(&binary, &dir.path().join("out"), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let paths: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert!(paths[0].ends_with(".tar.gz") && !paths[0].ends_with(".debug.tar.gz"));
    assert!(paths[1].ends_with(".debug.tar.gz"));

    let unpacked = dir.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    untar(&paths[0], &unpacked);
    untar(&paths[1], &unpacked);
    // The layout the stacks' user data installs from: one file named
    // `tidepool`, in one directory.
    let find = |name: &str| {
        walk(&unpacked)
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n == name))
            .collect::<Vec<_>>()
    };
    let shipped = find("tidepool");
    assert_eq!(shipped.len(), 1, "{shipped:?}");
    let symbols = find("tidepool.debug");
    assert_eq!(symbols.len(), 1, "{symbols:?}");

    let s = sections(&shipped[0]);
    for section in [".debug_info", ".debug_line", ".debug_str"] {
        assert!(
            !s.contains(section),
            "{section} left in the shipped binary:\n{s}"
        );
    }
    assert!(s.contains(".gnu_debuglink"), "{s}");
    assert!(sections(&symbols[0]).contains(".debug_line"));
    let shipped_len = std::fs::metadata(&shipped[0]).unwrap().len();
    let built_len = std::fs::metadata(&binary).unwrap().len();
    assert!(shipped_len < built_len, "{shipped_len} !< {built_len}");
    let version = Command::new(&shipped[0]).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("tidepool "));
}

#[test]
fn a_binary_that_needs_a_newer_glibc_than_the_hosts_is_refused() {
    let binary = Tidepool::binary().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = package(&binary, dir.path(), &["--glibc-max", "2.2"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs glibc") && err.contains("2.2"), "{err}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing written"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
