//! Tooling as tests: formatting, lints, the layering rule and banned patterns fail
//! `cargo test` like any other bug.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Broker modules from the bottom up; a module may only use modules of a lower or equal
/// layer (DESIGN §2). Modules not yet written are listed so the rule is ready for them.
const LAYERS: &[(&str, u8)] = &[
    ("shard", 1),
    ("storage", 2),
    ("partition", 3),
    ("replication", 3),
    ("cluster", 3),
    ("group", 4),
    ("server", 5),
    ("embedded", 6),
    ("cli", 6),
];

/// Files that may name glommio: the executor layer, the DMA adapter and socket code.
const GLOMMIO_ALLOWED: &[&str] = &["src/shard/", "src/storage/file.rs", "src/server/"];

const BANNED: &[&str] = &[
    "unsafe impl Send",
    "unbounded(",
    "unbounded_channel(",
    "todo!(",
    "dbg!(",
    "unimplemented!(",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn layer_of(relative_path: &str) -> Option<(&'static str, u8)> {
    let rest = relative_path.strip_prefix("src/")?;
    let module = rest.split(['/', '.']).next()?;
    LAYERS.iter().find(|(name, _)| *name == module).copied()
}

fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
}

#[test]
fn modules_only_use_layers_below_them() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut violations = Vec::new();
    for file in &files {
        let path = relative(file);
        let Some((module, layer)) = layer_of(&path) else {
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (number, line) in code_lines(&text) {
            for (other, other_layer) in LAYERS {
                let used = line.contains(&format!("crate::{other}::"))
                    || line.contains(&format!("crate::{other};"))
                    || line.contains(&format!("crate::{{{other}"));
                if used && *other != module && *other_layer > layer {
                    violations.push(format!("{path}:{}: {module} uses {other}", number + 1));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
}

fn names_glommio(text: &str) -> bool {
    code_lines(text).any(|(_, line)| line.contains("glommio::"))
}

#[test]
fn only_the_executor_adapters_name_glommio() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    rust_files(&root().join("protocol/src"), &mut files);
    let offenders: Vec<String> = files
        .iter()
        .map(|file| relative(file))
        .filter(|path| {
            !GLOMMIO_ALLOWED
                .iter()
                .any(|allowed| path.starts_with(allowed))
        })
        .filter(|path| names_glommio(&std::fs::read_to_string(root().join(path)).unwrap()))
        .collect();
    assert!(
        offenders.is_empty(),
        "glommio named outside its adapters: {offenders:?}"
    );
}

#[test]
fn the_protocol_crate_is_a_leaf_without_io_or_async() {
    let manifest = std::fs::read_to_string(root().join("protocol/Cargo.toml")).unwrap();
    let dependencies = manifest.split("[dependencies]").nth(1).unwrap_or("");
    let dependencies = dependencies.split("\n[").next().unwrap_or("");
    for forbidden in ["glommio", "tokio", "flumen ", "futures"] {
        assert!(
            !dependencies.contains(forbidden),
            "protocol depends on {forbidden}"
        );
    }
    let mut files = Vec::new();
    rust_files(&root().join("protocol/src"), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (number, line) in code_lines(&text) {
            assert!(
                !line.contains("std::fs")
                    && !line.contains("std::net")
                    && !line.contains("async fn"),
                "{}:{}: protocol does I/O or async",
                relative(&file),
                number + 1
            );
        }
    }
}

#[test]
fn banned_patterns_are_absent() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    rust_files(&root().join("protocol/src"), &mut files);
    rust_files(&root().join("client/src"), &mut files);
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (number, line) in code_lines(&text) {
            for pattern in BANNED {
                if line.contains(pattern) {
                    found.push(format!("{}:{}: {pattern}", relative(file), number + 1));
                }
            }
        }
    }
    assert!(found.is_empty(), "banned patterns:\n{}", found.join("\n"));
}

#[test]
fn every_module_file_opens_with_a_doc_comment() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    rust_files(&root().join("protocol/src"), &mut files);
    rust_files(&root().join("client/src"), &mut files);
    let undocumented: Vec<String> = files
        .iter()
        .filter(|file| !file.ends_with("tests.rs"))
        .filter(|file| !std::fs::read_to_string(file).unwrap().starts_with("//!"))
        .map(|file| relative(file))
        .collect();
    assert!(
        undocumented.is_empty(),
        "files without a //! module doc: {undocumented:?}"
    );
}

fn cargo(args: &[&str]) -> std::process::Output {
    // A separate target directory: the outer `cargo test` may still hold the main one.
    Command::new(env!("CARGO"))
        .args(args)
        .current_dir(root())
        .env("CARGO_TARGET_DIR", root().join("target/tidy"))
        .output()
        .expect("cargo runs")
}

#[test]
fn code_is_formatted() {
    let output = cargo(&["fmt", "--all", "--", "--check"]);
    assert!(
        output.status.success(),
        "cargo fmt --check failed; run `cargo fmt --all`:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn clippy_is_clean() {
    let output = cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    assert!(
        output.status.success(),
        "cargo clippy -D warnings failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
