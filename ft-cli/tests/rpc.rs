//! The RPC scenario of `ft demo` and `ft sim rpc`, end to end.

mod common;

use common::{ft, quick, refused};

fn line<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
}

/// The number before `what` in `line` ("12 calls executed twice" → 12).
fn count(line: &str, what: &str) -> u64 {
    let before = &line[..line
        .find(what)
        .unwrap_or_else(|| panic!("{what:?} in {line}"))];
    before
        .split_whitespace()
        .last()
        .and_then(|w| w.trim_start_matches('(').parse().ok())
        .unwrap_or_else(|| panic!("a number before {what:?} in {line}"))
}

#[test]
fn sim_rpc_shows_what_each_semantics_guarantees() {
    let (ok, text) = ft(&["sim", "rpc", "--calls", "40", "--seed", "3"]);
    assert!(ok, "{text}");
    // Two server crashes by default, and the network really lost messages.
    let network = line(&text, "network:");
    assert!(network.contains("2 crashes"), "{network}");
    assert!(count(network, "messages lost") > 0, "{network}");
    let most = line(&text, "at-most-once ");
    assert_eq!(count(most, "calls executed twice"), 0, "{most}");
    let exactly = line(&text, "exactly-once ");
    // No server crash is reported to an exactly-once caller.
    assert!(!exactly.contains("server crashed"), "{exactly}");
    let least = line(&text, "at-least-once ");
    assert!(!least.contains("server crashed"), "{least}");
}

#[test]
fn the_demo_includes_the_rpc_scenario() {
    let (ok, text) = ft(&["demo", "--seeds", "1", "--duration-ms", "500"]);
    assert!(ok, "{text}");
    assert!(text.contains("reliable RPC:"), "{text}");
    let exactly = line(&text, "exactly-once ");
    assert!(!exactly.contains("server crashed"), "{exactly}");
    let most = line(&text, "at-most-once ");
    assert_eq!(count(most, "calls executed twice"), 0, "{most}");
}

const HUGE: &str = "18446744073709551615";

#[test]
fn sim_rpc_refuses_values_out_of_range() {
    for clients in ["0", "65", HUGE] {
        refused(&["sim", "rpc", "--clients", clients], "--clients");
    }
    for p in ["1", "2", "NaN", "-inf"] {
        refused(&["sim", "rpc", &format!("--loss={p}")], "--loss");
        refused(&["sim", "rpc", &format!("--duplicate={p}")], "--duplicate");
    }
    for crashes in ["1001", HUGE] {
        refused(
            &["sim", "rpc", "--server-crashes", crashes],
            "--server-crashes",
        );
    }
    // One past the largest number.
    refused(
        &["sim", "rpc", "--calls", "18446744073709551616"],
        "--calls",
    );
    refused(&["sim", "rpc", "--seed", "18446744073709551616"], "--seed");
}

#[test]
fn sim_rpc_clamps_huge_values_and_says_so() {
    let out = quick(
        &[
            "sim",
            "rpc",
            "--calls",
            HUGE,
            "--clients",
            "1",
            "--semantics",
            "at-most-once",
            "--server-crashes",
            "0",
            "--seed",
            HUGE,
        ],
        &[&format!("note: --calls {HUGE} clamped to 10000")],
    );
    assert!(out.contains("1 clients × 10000 calls"), "{out}");
    assert!(
        line(&out, "at-most-once ").contains("/10000 answered"),
        "{out}"
    );
    let help = quick(&["sim", "rpc", "--help"], &[]);
    for range in ["1 to 64", "0 to 10000", "below 1", "0 to 1000,"] {
        assert!(help.contains(range), "{range} in {help}");
    }
}
