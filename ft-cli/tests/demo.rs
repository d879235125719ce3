//! `ft demo` end to end: it runs, reports every fault kind, and reproduces.

mod common;

use common::ft;

fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.trim_start().starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{text}"))
}

#[test]
fn demo_reports_faults_and_a_clean_sweep() {
    let (ok, text) = ft(&["demo", "--seed", "3", "--seeds", "5", "--millis", "3000"]);
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
        let (ok, text) = ft(&["demo", "--seed", seed, "--seeds", "0", "--millis", "2000"]);
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
    let (ok, _) = ft(&["demo", "--nodes", "1"]);
    assert!(!ok, "a one-node cluster is refused");
}
