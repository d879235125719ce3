//! The RPC scenario of `ft demo` and `ft sim rpc`, end to end.

mod common;

use common::{ft, quick, refused};

fn line<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
}

/// The number before `what` in `line` ("12 messages lost" → 12).
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

/// One semantics' report: its calls, how each ended, its executions.
#[derive(Debug)]
struct Report {
    calls: u64,
    /// "answered", "timed out (executed: unknown)", ... → calls.
    outcomes: Vec<(String, u64)>,
    executions: u64,
    executed_twice: u64,
    explanation: String,
}

impl Report {
    fn of(&self, outcome: &str) -> u64 {
        self.outcomes
            .iter()
            .filter(|(o, _)| o.starts_with(outcome))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Parses the report of `semantics`: a line "<semantics>  N calls: a
/// answered, b <outcome>, ..." and the next, "E executions; executed twice:
/// K calls — <what that means>".
fn report(text: &str, semantics: &str) -> Report {
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with(&format!("{semantics} ")))
        .unwrap_or_else(|| panic!("no {semantics} report in:\n{text}"));
    let (head, tail) = lines[at].split_once(" calls: ").expect("N calls: ...");
    let calls = head
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .expect("a number of calls");
    let outcomes = tail
        .split(", ")
        .map(|part| {
            let (n, what) = part.split_once(' ').expect("N outcome");
            (what.to_string(), n.parse().expect("a count"))
        })
        .collect();
    let next = lines[at + 1];
    let (twice, explanation) = next
        .split_once("executed twice: ")
        .expect("executed twice")
        .1
        .split_once(" — ")
        .expect("an explanation");
    Report {
        calls,
        outcomes,
        executions: count(next, "executions"),
        executed_twice: twice
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("a count"),
        explanation: explanation.to_string(),
    }
}

const SEMANTICS: [&str; 3] = ["at-least-once", "at-most-once", "exactly-once"];

/// Every call has exactly one outcome in the report, and none is
/// unaccounted for.
fn assert_accounted(text: &str) {
    for semantics in SEMANTICS {
        let r = report(text, semantics);
        let sum: u64 = r.outcomes.iter().map(|(_, n)| n).sum();
        assert_eq!(sum, r.calls, "{semantics}: {r:?}\n{text}");
        assert_eq!(r.of("UNACCOUNTED"), 0, "{text}");
        assert!(r.executions >= r.executed_twice, "{r:?}");
    }
}

#[test]
fn sim_rpc_shows_what_each_semantics_guarantees() {
    let (ok, text) = ft(&["sim", "rpc", "--calls", "40", "--seed", "3"]);
    assert!(ok, "{text}");
    // Two server crashes by default, and the network really lost messages.
    let network = line(&text, "network:");
    assert!(network.contains("2 crashes"), "{network}");
    assert!(count(network, "messages lost") > 0, "{network}");
    assert_accounted(&text);
    let most = report(&text, "at-most-once");
    assert_eq!(most.executed_twice, 0, "{text}");
    assert!(most.explanation.starts_with("never allowed"), "{text}");
    // The crashes really cost at-most-once calls, and each says it may have run.
    assert!(most.of("server crashed (executed: unknown)") > 0, "{text}");
    // No server crash is reported to an exactly-once or at-least-once
    // caller: every call is answered.
    let exactly = report(&text, "exactly-once");
    assert_eq!(exactly.of("answered"), exactly.calls, "{text}");
    assert!(
        exactly
            .explanation
            .contains("died with the server before its completion record was durable"),
        "{text}"
    );
    assert!(
        line(&text, "durable effects,").contains("0 calls with more than one"),
        "{text}"
    );
    let least = report(&text, "at-least-once");
    assert_eq!(least.of("answered"), least.calls, "{text}");
    assert!(least.explanation.starts_with("allowed"), "{text}");
}

/// The scenario: an exactly-once client with 5 s deadlines and a
/// server that crashes three times, back within 200 ms each time, must have
/// every call answered (the retry budget once stranded half of them).
#[test]
fn exactly_once_answers_every_call_through_three_server_crashes() {
    for seed in ["1", "2", "3"] {
        let args = [
            "sim",
            "rpc",
            "--semantics",
            "exactly-once",
            "--loss",
            "0.2",
            "--duplicate",
            "0",
            "--server-crashes",
            "3",
            "--seed",
            seed,
        ];
        let (ok, text) = ft(&args);
        assert!(ok, "{text}");
        assert!(line(&text, "network:").contains("3 crashes"), "{text}");
        let r = report(&text, "exactly-once");
        assert_eq!(
            (r.calls, r.of("answered")),
            (150, 150),
            "seed {seed}:\n{text}"
        );
    }
}

/// A crashed client's calls have no outcome: the report names them, the
/// calls in flight at the crash apart from those it never made while down.
#[test]
fn calls_of_a_crashed_client_are_accounted_for() {
    let mut in_flight = 0;
    for seed in ["1", "2", "3", "4"] {
        let (ok, text) = ft(&["sim", "rpc", "--client-crash", "--seed", seed]);
        assert!(ok, "{text}");
        assert!(line(&text, "network:").contains("3 crashes"), "{text}");
        assert_accounted(&text);
        for semantics in SEMANTICS {
            let r = report(&text, semantics);
            // n1 is down for 300 ms: 15 of its calls (one per 20 ms) are never made.
            assert_eq!(r.of("never made"), 15, "{semantics}, seed {seed}:\n{text}");
            in_flight += r.of("in flight when their client crashed");
        }
    }
    assert!(
        in_flight > 0,
        "no call was ever in flight at the client's crash"
    );
}

#[test]
fn a_run_reproduces_from_its_reproduce_line() {
    let without_wall_time = |text: &str| -> String {
        text.lines()
            .filter(|l| !l.contains("wall time"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (ok, first) = ft(&[
        "sim",
        "rpc",
        "--client-crash",
        "--loss",
        "0.3",
        "--seed",
        "9",
    ]);
    assert!(ok, "{first}");
    let reproduce = line(&first, "reproduce: ft ")
        .split_once("reproduce: ft ")
        .unwrap()
        .1;
    let args: Vec<&str> = reproduce.split_whitespace().collect();
    let (ok, again) = ft(&args);
    assert!(ok, "{again}");
    assert_eq!(without_wall_time(&first), without_wall_time(&again));
}

#[test]
fn the_demo_includes_the_rpc_scenario() {
    let (ok, text) = ft(&["demo", "--seeds", "1", "--duration-ms", "500"]);
    assert!(ok, "{text}");
    assert!(text.contains("reliable RPC:"), "{text}");
    assert_accounted(&text);
    let exactly = report(&text, "exactly-once");
    assert_eq!(exactly.of("server crashed"), 0, "{text}");
    assert_eq!(report(&text, "at-most-once").executed_twice, 0, "{text}");
    assert!(
        line(&text, "reproduce: ft sim rpc").contains("--client-crash"),
        "{text}"
    );
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
    assert_eq!(report(&out, "at-most-once").calls, 10_000, "{out}");
    let help = quick(&["sim", "rpc", "--help"], &[]);
    for range in ["1 to 64", "0 to 10000", "below 1", "0 to 1000,"] {
        assert!(help.contains(range), "{range} in {help}");
    }
}
