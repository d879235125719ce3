//! The group scenario of `ft demo` and `ft sim group`, end to end.

mod common;

use common::{ft, quick, refused};

fn line<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
}

#[test]
fn demo_shows_the_coordinator_replaced_and_agreement_with_a_traitor() {
    let (ok, text) = ft(&["demo", "--seeds", "1", "--duration-ms", "1000"]);
    assert!(ok, "{text}");
    // n0, the coordinator, crashes; everyone ends up following n1.
    assert!(line(&text, "declares n0 failed").contains("n0 failed"));
    let end = line(&text, "views agree:");
    assert!(end.contains("views agree: yes"), "{end}");
    assert!(end.contains("n0#0 failed"), "{end}");
    assert!(end.contains("n2→n1") && end.contains("n4→n1"), "{end}");
    // OM(1): four generals agree on the loyal commander's value; with three
    // the traitor splits the loyal ones, and the checked constructor refuses.
    let four = line(&text, "n = 4");
    assert!(
        four.contains("n1 decides attack") && four.contains("n2 decides attack"),
        "{four}"
    );
    let three = line(&text, "n = 3");
    assert!(
        three.contains("n0 decides attack") && three.contains("n1 decides retreat"),
        "{three}"
    );
    assert!(three.contains("refuses"), "{three}");
}

#[test]
fn sim_group_compares_the_detectors_and_detects_every_crash() {
    let (ok, text) = ft(&[
        "sim",
        "group",
        "--nodes",
        "8",
        "--crashes",
        "2",
        "--slow-ms",
        "1000",
        "--duration-ms",
        "60000",
    ]);
    assert!(ok, "{text}");
    assert!(line(&text, "network:").contains("2 crashes"), "{text}");
    for detector in ["fixed timeout", "phi accrual", "SWIM"] {
        let row = line(&text, &format!("| {detector} |"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | detector | detection | undetected | false positives | load |
        assert_eq!(cells[3], "0", "{detector} missed a crash: {row}");
    }
    assert!(line(&text, "reproduce:").contains("--seed 1"));
}

#[test]
fn sim_group_runs_swim_alone_for_large_groups_and_refuses_bad_input() {
    let (ok, text) = ft(&[
        "sim",
        "group",
        "--nodes",
        "300",
        "--crashes",
        "1",
        "--duration-ms",
        "60000",
    ]);
    assert!(ok, "{text}");
    let swim = line(&text, "SWIM: detection");
    assert!(swim.contains("undetected 0"), "{swim}");
    refused(&["sim", "group", "--loss", "1.5"], "--loss");
    refused(&["sim", "group", "--nodes", "1"], "--nodes");
}

const HUGE: &str = "18446744073709551615";

#[test]
fn sim_group_refuses_values_out_of_range() {
    for nodes in ["0", "2", "2001", HUGE] {
        refused(&["sim", "group", "--nodes", nodes], "--nodes");
        // The old spelling too.
        refused(&["sim", "group", "--n", nodes], "--nodes");
    }
    for loss in ["1", "1.5", "NaN", "inf", "--5"] {
        refused(&["sim", "group", &format!("--loss={loss}")], "--loss");
    }
    for slow in ["60001", HUGE] {
        refused(&["sim", "group", "--slow-ms", slow], "--slow-ms");
    }
    refused(
        &["sim", "group", "--seed", "18446744073709551616"],
        "--seed",
    );
    refused(
        &["sim", "group", "--secs", "60", "--duration-ms", "60000"],
        "--secs",
    );
}

#[test]
fn sim_group_clamps_huge_values_and_says_so() {
    let out = quick(
        &[
            "sim",
            "group",
            "--nodes",
            "3",
            "--crashes",
            HUGE,
            "--duration-ms",
            HUGE,
        ],
        &[
            &format!("note: --duration-ms {HUGE} clamped to 600000"),
            &format!("note: --crashes {HUGE} clamped to 1 (at most --nodes minus 2)"),
        ],
    );
    assert!(
        line(&out, "ft sim group:").contains("600 s virtual"),
        "{out}"
    );
    assert!(
        line(&out, "reproduce:").contains("--crashes 1 --slow-ms 0 --duration-ms 600000"),
        "{out}"
    );
    let out = quick(
        &["sim", "group", "--nodes", "3", "--secs", HUGE],
        &[&format!("note: --secs {HUGE} clamped to 600")],
    );
    assert!(
        line(&out, "ft sim group:").contains("600 s virtual"),
        "{out}"
    );
    let out = quick(
        &["sim", "group", "--nodes", "3", "--duration-ms", "0"],
        &["note: --duration-ms 0 clamped to 10000"],
    );
    assert!(
        line(&out, "ft sim group:").contains("10 s virtual"),
        "{out}"
    );
    // Crashes come every 5 s from a quarter of the run: two fit in 10 s.
    let out = quick(
        &[
            "sim",
            "group",
            "--nodes",
            "10",
            "--crashes",
            "8",
            "--duration-ms",
            "10000",
        ],
        &["note: --crashes 8: 6 of them would come after the end of the run and do not happen"],
    );
    assert!(line(&out, "network:").contains("2 crashes"), "{out}");
}

#[test]
fn sim_group_takes_the_old_spellings_and_hides_them() {
    let out = quick(
        &["sim", "group", "--n", "4", "--secs", "10", "--crashes", "0"],
        &[],
    );
    let head = line(&out, "ft sim group:");
    assert!(
        head.contains("4 members") && head.contains("10 s virtual"),
        "{head}"
    );
    assert!(
        line(&out, "reproduce:").contains("--nodes 4 ") && out.contains("--duration-ms 10000 "),
        "{out}"
    );
    // Milliseconds that are not whole seconds are shown as such.
    let out = quick(
        &["sim", "group", "--nodes", "4", "--duration-ms", "10500"],
        &[],
    );
    assert!(
        line(&out, "ft sim group:").contains("10.5 s virtual"),
        "{out}"
    );
    let help = quick(&["sim", "group", "--help"], &[]);
    assert!(!help.contains("--n ") && !help.contains("--secs"), "{help}");
    for range in [
        "3 to 2000",
        "below 1",
        "nodes − 2",
        "0 (none) to 60000",
        "10000 (10 s) to 600000",
    ] {
        assert!(help.contains(range), "{range} in {help}");
    }
}
