//! The image builds from source: everything `docker/Dockerfile`'s build stage reads must be in
//! the build context that `.dockerignore` lets through (issue 23: `companion/` was left out, and
//! `include_str!` failed the from-source build while the e2e test, injecting a prebuilt binary,
//! passed). This is the quick check, without Docker; tests/docker/e2e.sh also builds the image
//! from source once, through the real context.

use std::fs;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether `.dockerignore` (`*`, then `!path` exceptions and exclusions below them, as this
/// repository writes it) sends `path` into the build context.
fn in_context(rules: &str, path: &str) -> bool {
    let mut sent = false;
    for rule in rules.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (keep, pattern) = match rule.strip_prefix('!') {
            Some(p) => (true, p.trim_end_matches('/')),
            None => (false, rule.trim_end_matches('/')),
        };
        let matches = pattern == "*" || path == pattern || path.starts_with(&format!("{pattern}/"));
        if matches {
            sent = keep;
        }
    }
    sent
}

/// Every file under `dir` with one of `extensions`, relative to the repository.
fn files(dir: &Path, extensions: &[&str], out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, extensions, out);
        } else if path.extension().is_some_and(|e| extensions.iter().any(|x| e == *x)) {
            out.push(path);
        }
    }
}

#[test]
fn the_docker_build_context_holds_every_file_the_build_reads() {
    let rules = fs::read_to_string(repo().join(".dockerignore")).unwrap();
    let mut needed: Vec<String> = ["Cargo.toml", "Cargo.lock", "scripts/build.sh", "src/main.rs", "src/lib.rs"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    // Cargo.toml names the integration tests' target: cargo reads its path even for a build.
    needed.push("tests/integration/main.rs".into());
    let mut sources = Vec::new();
    files(&repo().join("src"), &["rs"], &mut sources);
    for source in &sources {
        let text = fs::read_to_string(source).unwrap();
        let macros = ["include_str!(\"", "include_bytes!(\""];
        for piece in macros.iter().flat_map(|m| text.split(m).skip(1)) {
            let Some(end) = piece.find('"') else { continue };
            let target = source.parent().unwrap().join(&piece[..end]);
            let target = target.canonicalize().unwrap_or_else(|e| panic!("{}: {e}", target.display()));
            needed.push(target.strip_prefix(repo().canonicalize().unwrap()).unwrap().display().to_string());
        }
    }
    assert!(needed.iter().any(|n| n.starts_with("companion/")), "the companion is embedded: {needed:?}");
    let missing: Vec<_> = needed.iter().filter(|n| !in_context(&rules, n)).collect();
    assert!(missing.is_empty(), ".dockerignore keeps these out of the image's build: {missing:?}");
}

#[test]
fn the_context_rules_are_read_as_docker_reads_them() {
    let rules = "*\n!src/\n!companion/\n!tests/\ntests/**/__pycache__\n";
    assert!(in_context(rules, "src/main.rs") && in_context(rules, "companion/doors.py"));
    assert!(!in_context(rules, "target/release/comfy-init") && !in_context(rules, "README.md"));
}
