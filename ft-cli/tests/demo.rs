//! `ft demo` end to end: it runs, reports every fault kind, and reproduces.

mod common;

use common::{ft, quick, refused};

fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.trim_start().starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{text}"))
}

#[test]
fn demo_reports_faults_and_a_clean_sweep() {
    let (ok, text) = ft(&[
        "demo",
        "--seed",
        "3",
        "--seeds",
        "5",
        "--duration-ms",
        "3000",
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("failure models injected: crash"), "{text}");
    assert!(line(&text, "sweep:").contains("all held"), "{text}");
    // The mixed plan really injected faults in the featured run.
    let crashes = line(&text, "crashes:");
    assert!(!crashes.starts_with("crashes: 0 crashes"), "{crashes}");
    let messages = line(&text, "messages:");
    assert!(!messages.contains(" 0 lost"), "{messages}");
    assert!(line(&text, "determinism:").contains("identical trace digest"));
}

#[test]
fn the_same_seed_prints_the_same_run_and_another_seed_does_not() {
    let run = |seed: &str| {
        let (ok, text) = ft(&[
            "demo",
            "--seed",
            seed,
            "--seeds",
            "0",
            "--duration-ms",
            "2000",
        ]);
        assert!(ok, "{text}");
        let digest = line(&text, "determinism:")
            .split("digest ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .to_string();
        (line(&text, "messages:").to_string(), digest)
    };
    assert_eq!(run("11"), run("11"));
    assert_ne!(run("11").1, run("12").1);
}

#[test]
fn help_explains_itself_and_bad_arguments_are_refused() {
    let (ok, text) = ft(&["--help"]);
    assert!(ok && text.contains("demo"), "{text}");
    let (ok, text) = ft(&["demo", "--help"]);
    assert!(
        ok && text.contains("--seed") && text.contains("--nodes"),
        "{text}"
    );
    refused(&["demo", "--nodes", "1"], "--nodes");
}

const HUGE: &str = "18446744073709551615";

#[test]
fn demo_refuses_values_out_of_range() {
    for nodes in ["0", "17", HUGE] {
        refused(&["demo", "--nodes", nodes], "--nodes");
    }
    // One past the largest number, and not a number.
    refused(&["demo", "--seed", "18446744073709551616"], "--seed");
    refused(&["demo", "--seeds", "many"], "--seeds");
    refused(&["demo", "--duration-ms", "1.5"], "--duration-ms");
}

#[test]
fn demo_clamps_huge_values_and_says_so() {
    // Ten thousand seeds of one millisecond on two nodes: the largest sweep,
    // yet well under a second.
    let out = quick(
        &[
            "demo",
            "--seeds",
            HUGE,
            "--nodes",
            "2",
            "--duration-ms",
            "1",
        ],
        &[&format!("note: --seeds {HUGE} clamped to 10000")],
    );
    assert!(
        line(&out, "sweep:").starts_with("sweep: 10000 more seeds"),
        "{out}"
    );
    let out = quick(
        &[
            "demo",
            "--duration-ms",
            HUGE,
            "--nodes",
            "2",
            "--seeds",
            "0",
        ],
        &[&format!("note: --duration-ms {HUGE} clamped to 60000")],
    );
    assert!(
        out.contains("on 2 simulated nodes for 60s of virtual time"),
        "{out}"
    );
    assert!(line(&out, "reproduce any run:").ends_with("--nodes 2 --duration-ms 60000"));
    let out = quick(
        &["demo", "--duration-ms", "0", "--seeds", "0"],
        &["note: --duration-ms 0 clamped to 1"],
    );
    assert!(out.contains("for 1ms of virtual time"), "{out}");
    // The largest seed: the sweep's seeds wrap around.
    let out = quick(
        &[
            "demo",
            "--seed",
            HUGE,
            "--seeds",
            "2",
            "--duration-ms",
            "100",
        ],
        &[],
    );
    assert!(line(&out, "sweep:").contains("all held"), "{out}");
}

#[test]
fn demo_takes_the_old_spelling_and_hides_it() {
    let out = quick(&["demo", "--millis", "100", "--seeds", "1"], &[]);
    assert!(out.contains("for 100ms of virtual time"), "{out}");
    assert!(line(&out, "reproduce any run:").ends_with("--duration-ms 100"));
    let help = quick(&["demo", "--help"], &[]);
    assert!(!help.contains("--millis"), "{help}");
    for range in ["2 to 16", "1 to 60000", "0 to 10000", "600000"] {
        assert!(help.contains(range), "{range} in {help}");
    }
}
