//! The commit scenario of `ft demo` and `ft sim commit`, end to end.

mod common;

use common::{ft, quick, refused};

/// The lines of `text` from the one starting `from` (trimmed) up to, not
/// including, the next one starting `to`.
fn part<'a>(text: &'a str, from: &str, to: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| !l.trim_start().starts_with(from))
        .take_while({
            let mut first = true;
            move |l| std::mem::take(&mut first) || !l.trim_start().starts_with(to)
        })
        .collect()
}

fn has(lines: &[&str], what: &str) -> usize {
    lines.iter().filter(|l| l.contains(what)).count()
}

/// The number after `what` in the line of `lines` that holds it.
fn number_after(lines: &[&str], what: &str) -> u64 {
    let line = lines
        .iter()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no {what:?} in {lines:#?}"));
    let rest = &line[line.find(what).unwrap() + what.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .find(|w| !w.is_empty())
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("a number after {what:?} in {line}"))
}

#[test]
fn the_demo_shows_termination_blocking_and_the_limit_of_three_phase_commit() {
    let (ok, text) = ft(&["demo", "--seeds", "0", "--duration-ms", "200"]);
    assert!(ok, "{text}");
    assert!(text.contains("distributed commit:"), "{text}");

    // 1. The decision reached n1 only; n2 and n3 learn it from n1 while n0
    // is down, before it restarts.
    let one = part(&text, "1. two-phase commit", "2. ");
    assert_eq!(has(&one, "n0 CRASHES"), 1, "{one:#?}");
    let restart = one.iter().position(|l| l.contains("n0 restarts")).unwrap();
    for p in ["n1", "n2", "n3"] {
        let at = one
            .iter()
            .position(|l| l.contains(&format!("{p}: READY -> COMMIT")))
            .unwrap_or_else(|| panic!("{p} commits: {one:#?}"));
        assert!(at < restart, "{p} committed before n0 came back: {one:#?}");
    }
    assert!(number_after(&one, "outcomes reached through it") >= 2);
    // Back, n0 resends its decision and hears every acknowledgement: the
    // cut was at the crash only.
    let finished = one
        .iter()
        .position(|l| l.contains("n0 heard every acknowledgement"))
        .unwrap_or_else(|| panic!("n0 hears every ACK: {one:#?}"));
    assert!(finished > restart, "{one:#?}");
    assert_eq!(has(&one, "atomicity and validity held"), 1);

    // 2. Nobody knows: all three are told they are blocked, and abort when
    // the coordinator comes back and aborts.
    let two = part(&text, "2. two-phase commit", "3. ");
    assert_eq!(has(&two, "is BLOCKED"), 3, "{two:#?}");
    let restart = two.iter().position(|l| l.contains("n0 restarts")).unwrap();
    for p in ["n1", "n2", "n3"] {
        let at = two
            .iter()
            .position(|l| l.contains(&format!("{p}: READY -> ABORT")))
            .unwrap_or_else(|| panic!("{p} aborts: {two:#?}"));
        assert!(at > restart, "{two:#?}");
    }

    // 3. Three-phase commit terminates without n0, which never returns.
    let three = part(&text, "3. three-phase commit", "4. ");
    assert_eq!(has(&three, "n0 CRASHES (down for good)"), 1, "{three:#?}");
    assert_eq!(has(&three, ": READY -> ABORT"), 3, "{three:#?}");
    assert_eq!(has(&three, "is BLOCKED"), 0, "{three:#?}");
    assert_eq!(has(&three, "n0 restarts"), 0, "{three:#?}");

    // 4. Paxos Commit commits without n0: a participant took over.
    let four = part(&text, "4. Paxos Commit", "5. ");
    assert_eq!(has(&four, "n0 CRASHES (down for good)"), 1, "{four:#?}");
    assert_eq!(has(&four, ": PREPARED -> COMMIT"), 3, "{four:#?}");
    assert!(
        number_after(&four, "Paxos ballots above 0") >= 1,
        "{four:#?}"
    );
    assert_eq!(has(&four, "n0 restarts"), 0, "{four:#?}");

    // 5. Under a partition three-phase commit breaks atomicity, and says so.
    let five = part(&text, "5. three-phase", "6. ");
    assert_eq!(has(&five, "n1: PRECOMMIT -> COMMIT"), 1, "{five:#?}");
    assert_eq!(has(&five, "BROKEN"), 1, "{five:#?}");
    assert!(
        number_after(&five, "ft-sim:") > 0 && number_after(&five, "duplicated,") > 0,
        "the partition dropped messages: {five:#?}"
    );
    // 6. Two-phase commit in the same partition waits it out, and commits.
    let six = part(&text, "6. two-phase", "7. ");
    assert_eq!(has(&six, "atomicity and validity held"), 1, "{six:#?}");
    assert_eq!(has(&six, "is BLOCKED"), 2, "{six:#?}");
    let heal = six
        .iter()
        .position(|l| l.contains("the partition heals"))
        .unwrap();
    for p in ["n2", "n3"] {
        let at = six
            .iter()
            .position(|l| l.contains(&format!("{p}: READY -> COMMIT")))
            .unwrap_or_else(|| panic!("{p} commits: {six:#?}"));
        assert!(at > heal, "{six:#?}");
    }
    // 7. Paxos Commit in the same partition: the majority side decides the
    // same outcome before the heal.
    let seven = part(&text, "7. Paxos", "more:");
    assert_eq!(has(&seven, "atomicity and validity held"), 1, "{seven:#?}");
    assert!(number_after(&seven, "duplicated,") > 0, "{seven:#?}");
    let heal = seven
        .iter()
        .position(|l| l.contains("the partition heals"))
        .unwrap();
    for p in ["n2", "n3"] {
        let at = seven
            .iter()
            .position(|l| l.contains(&format!("{p}: PREPARED -> COMMIT")))
            .unwrap_or_else(|| panic!("{p} commits: {seven:#?}"));
        assert!(at < heal, "{seven:#?}");
    }
}

#[test]
fn two_phase_commit_blocks_while_its_coordinator_stays_down_and_says_so() {
    let out = quick(
        &[
            "sim",
            "commit",
            "--crash",
            "coordinator-waiting",
            "--down-ms",
            "0",
        ],
        &[],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(has(&lines, "is BLOCKED"), 3, "{out}");
    assert!(
        out.contains("at the end: n0 down, n1 READY, n2 READY, n3 READY"),
        "{out}"
    );
    assert!(
        out.contains("two-phase commit blocks, and stays safe"),
        "{out}"
    );
}

#[test]
fn three_phase_commit_under_a_partition_fails_the_run_with_the_seed() {
    let (ok, text) = ft(&[
        "sim",
        "commit",
        "--protocol",
        "3pc",
        "--crash",
        "none",
        "--faults",
        "partition",
        "--seed",
        "3",
    ]);
    assert!(!ok, "{text}");
    assert!(text.contains("FAILED: invariant"), "{text}");
    assert!(text.contains("atomicity: t1 committed at"), "{text}");
    assert!(
        text.contains("reproduce: ft sim commit --protocol 3pc --crash none --faults partition"),
        "{text}"
    );
}

#[test]
fn every_crash_point_of_every_protocol_ends_decided_under_loss() {
    for protocol in ["2pc", "3pc", "paxos"] {
        for crash in [
            "none",
            "coordinator-waiting",
            "coordinator-deciding",
            "participant-ready",
        ] {
            let mut lost = 0;
            for (faults, seeds) in [("none", 1..3), ("lossy", 1..4)] {
                // Three-phase commit assumes a reliable network.
                if protocol == "3pc" && faults == "lossy" {
                    continue;
                }
                for seed in seeds {
                    let seed = seed.to_string();
                    let args = [
                        "sim",
                        "commit",
                        "--protocol",
                        protocol,
                        "--crash",
                        crash,
                        "--faults",
                        faults,
                        "--seed",
                        &seed,
                    ];
                    let out = quick(&args, &[]);
                    // 2PC and 3PC coordinators that crash in WAIT abort
                    // (when they come back, or by termination); every
                    // other point commits (on a lossy
                    // network a vote timeout may abort instead).
                    // Paxos Commit's votes were chosen: it commits.
                    let want = if crash == "coordinator-waiting" && protocol != "paxos" {
                        "outcome: t1 aborted everywhere"
                    } else {
                        "outcome: t1 committed everywhere"
                    };
                    assert!(
                        out.contains("atomicity and validity held")
                            && (out.contains(want)
                                || faults == "lossy" && out.contains("everywhere it is known")),
                        "{args:?}: {out}"
                    );
                    if faults == "lossy" {
                        lost += number_after(&out.lines().collect::<Vec<_>>(), "messages sent,");
                    }
                }
            }
            // The loss happened.
            assert!(protocol == "3pc" || lost > 0, "{protocol} {crash}");
        }
    }
}

#[test]
fn an_abort_vote_aborts_everywhere() {
    for protocol in ["2pc", "3pc", "paxos"] {
        let out = quick(
            &[
                "sim",
                "commit",
                "--protocol",
                protocol,
                "--crash",
                "participant-ready",
                "--abort-voter",
                "3",
            ],
            &[],
        );
        assert!(
            out.contains("n3 is asked to vote; its application votes abort"),
            "{out}"
        );
        assert!(out.contains("outcome: t1 aborted everywhere"), "{out}");
    }
}

#[test]
fn bad_arguments_are_refused_with_the_usage() {
    refused(&["sim", "commit", "--protocol", "4pc"], "--protocol");
    refused(&["sim", "commit", "--crash", "somewhere"], "--crash");
    refused(&["sim", "commit", "--faults", "fire"], "--faults");
    refused(&["sim", "commit", "--abort-voter", "4"], "--abort-voter");
    refused(&["sim", "commit", "--abort-voter", "0"], "--abort-voter");
}

#[test]
fn faults_longer_than_ten_minutes_are_clamped_and_said() {
    let out = quick(
        &[
            "sim",
            "commit",
            "--down-ms",
            "999999999",
            "--partition-ms",
            "700000",
        ],
        &[
            "note: --down-ms 999999999 clamped to 600000",
            "note: --partition-ms 700000 clamped to 600000",
        ],
    );
    assert!(
        out.contains("--down-ms 600000 --partition-ms 600000"),
        "{out}"
    );
}
