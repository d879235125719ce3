//! The group scenario of `ft demo` and `ft sim group`, end to end.

mod common;

use common::ft;

fn line<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
}

#[test]
fn demo_shows_the_coordinator_replaced_and_agreement_with_a_traitor() {
    let (ok, text) = ft(&["demo", "--seeds", "1", "--millis", "1000"]);
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
        "--n",
        "8",
        "--crashes",
        "2",
        "--slow-ms",
        "1000",
        "--secs",
        "60",
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
        "--n",
        "300",
        "--crashes",
        "1",
        "--secs",
        "60",
    ]);
    assert!(ok, "{text}");
    let swim = line(&text, "SWIM: detection");
    assert!(swim.contains("undetected 0"), "{swim}");
    let (ok, text) = ft(&["sim", "group", "--loss", "1.5"]);
    assert!(!ok, "{text}");
    let (ok, _) = ft(&["sim", "group", "--n", "1"]);
    assert!(!ok);
}
