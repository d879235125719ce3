//! The RPC scenario of `ft demo` and `ft sim rpc`, end to end.

mod common;

use common::ft;

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
    let (ok, text) = ft(&["demo", "--seeds", "1", "--millis", "500"]);
    assert!(ok, "{text}");
    assert!(text.contains("reliable RPC:"), "{text}");
    let exactly = line(&text, "exactly-once ");
    assert!(!exactly.contains("server crashed"), "{exactly}");
    let most = line(&text, "at-most-once ");
    assert_eq!(count(most, "calls executed twice"), 0, "{most}");
}

#[test]
fn sim_rpc_refuses_bad_input() {
    let (ok, _) = ft(&["sim", "rpc", "--loss", "2"]);
    assert!(!ok);
    let (ok, _) = ft(&["sim", "rpc", "--clients", "0"]);
    assert!(!ok);
}
