//! The core is sans-IO: no clock, no files, no sockets, no threads, no processes, no
//! environment, no async runtime, no global randomness. This test reads its sources and fails
//! on any of them, so the rule survives every refactor.

/// Words no line of the core may contain (comments included: prose that needs them can
/// say "the clock" instead).
const FORBIDDEN: &[&str] = &["std::time", "std::fs", "std::net", "std::thread", "std::process", "std::env", "std::io", "tokio", "thread_rng", "SystemTime", "Instant::now", "rand::"];

/// Modules of `std` that do IO or read a clock, as they appear inside a grouped import
/// (`use std::{time, ...}`), where the words above do not.
const FORBIDDEN_MODULES: &[&str] = &["time", "fs", "net", "thread", "process", "env", "io", "os"];

/// Names of `std::io` that do no IO themselves: the stream traits (and their result type)
/// through which the `StateMachine` trait streams an image its driver opened.
const STREAM_TRAITS: &[&str] = &["std::io::Read", "std::io::Write", "std::io::Result"];

/// Every violation in one source text, as `line: what`.
fn violations(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = STREAM_TRAITS.iter().fold(line.to_string(), |line, name| line.replace(name, ""));
        for word in FORBIDDEN {
            if line.contains(word) {
                found.push(format!("{}: `{word}` in {line}", number + 1));
            }
        }
    }
    for group in std_groups(text) {
        for module in top_level_items(&group).iter().map(|item| first_segment(item)) {
            if FORBIDDEN_MODULES.contains(&module) {
                found.push(format!("grouped import of std::{module} in std::{{{group}}}"));
            }
        }
    }
    found
}

/// The insides of every `std::{ ... }` (nested braces kept; line breaks made spaces).
fn std_groups(text: &str) -> Vec<String> {
    let compact: String = text.chars().map(|c| if c.is_whitespace() { ' ' } else { c }).collect();
    let mut groups = Vec::new();
    let mut rest = compact.as_str();
    while let Some(start) = rest.find("std::{") {
        let inside = &rest[start + "std::{".len()..];
        let mut depth = 1;
        let end = inside.char_indices().find_map(|(at, c)| {
            depth += match c {
                '{' => 1,
                '}' => -1,
                _ => 0,
            };
            (depth == 0).then_some(at)
        });
        let end = end.unwrap_or(inside.len());
        groups.push(inside[..end].to_string());
        rest = &inside[end..];
    }
    groups
}

/// `a::b, c::{d, e}, f` → `["a::b", "c::{d,e}", "f"]`.
fn top_level_items(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut from) = (0, 0);
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[from..at]);
                from = at + 1;
            }
            _ => {}
        }
    }
    items.push(&group[from..]);
    items.into_iter().filter(|item| !item.is_empty()).collect()
}

/// `thread::{self, spawn}` → `thread`; `io::Write as _` → `io`.
fn first_segment(item: &str) -> &str {
    let item = item.trim();
    let end = item.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(item.len());
    &item[..end]
}

#[test]
fn core_sources_do_no_io() {
    let source_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = 0;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&source_dir).expect("src is readable") {
        let path = entry.expect("directory entry").path();
        let text = std::fs::read_to_string(&path).expect("source is readable");
        found.extend(violations(&text).into_iter().map(|violation| format!("{}:{violation}", path.display())));
        checked += 1;
    }
    assert!(found.is_empty(), "the sans-IO core must not do IO:\n{}", found.join("\n"));
    assert!(checked >= 10, "expected to check every core source file, saw {checked}");
}

/// The check itself can fail: each of these must be caught, and only these.
#[test]
fn the_check_catches_grouped_and_nested_imports() {
    let caught = |text: &str| !violations(text).is_empty();
    assert!(caught("use std::{time, fmt};"));
    assert!(caught("use std::{fmt,\n    time::Duration};"));
    assert!(caught("use std::{sync::Arc, thread::{self, spawn}};"));
    assert!(caught("use std::{collections::BTreeMap, fs};"));
    assert!(caught("use std::{io::Write as _};"));
    assert!(caught("let now = std::time::Instant::now();"));
    assert!(caught("std::io::stdout().write_all(b\"x\")"));
    assert!(caught("fn f(out: &mut dyn std::io::Write) { std::io::copy(&mut std::io::empty(), out); }"));
    assert!(!caught("fn write_snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()>;"));
    assert!(!caught("use std::{fmt, collections::{BTreeMap, VecDeque}, sync::Arc};"));
    assert!(!caught("use std::{cmp::Ordering, mem};"));
}

#[test]
fn core_has_no_io_dependencies() {
    let manifest = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).expect("manifest");
    let dependencies = manifest.split("[dependencies]").nth(1).expect("a dependencies section");
    // serde (message types), bytes (shared command buffers), crc32c (a pure checksum function).
    const ALLOWED: &[&str] = &["serde", "bytes", "crc32c"];
    for line in dependencies.lines().take_while(|line| !line.starts_with('[')) {
        let name = line.split(['=', '.']).next().unwrap_or_default().trim();
        assert!(name.is_empty() || name.starts_with('#') || ALLOWED.contains(&name), "keel-core may depend only on {ALLOWED:?}, found {name}");
    }
}
