//! Distributed commit across four real processes on loopback UDP, each
//! with its own data directory (FileLog and incarnation): the scenarios of
//! `examples/commit_crash.rs`, run as tests and checked.
//!
//! The example's code is compiled into this test as a module, and the test
//! binary re-runs itself as each node process (as `multiprocess.rs` does):
//! the parent starts `current_exe() --exact child_process_entry --ignored
//! …` with [`CHILD_ARGS_ENV`] holding the node's command line. A process is
//! stopped at a chosen log record by a log layer that parks the append, and
//! then killed with SIGKILL by the parent; it restarts on the same
//! directory with the same node id (a new incarnation). A SIGKILL is not a
//! power loss: what was written stays.

#[path = "../examples/commit_crash.rs"]
#[allow(dead_code)]
mod commit_crash;

use std::process::Command;

use commit_crash::Report;

const CHILD_ARGS_ENV: &str = "FT_COMMIT_CRASH_CHILD_ARGS";
const SEP: char = '\u{1f}';

/// The child's side; a no-op unless started by [`spawn`].
#[test]
#[ignore = "runs only as a child process of the commit_crash tests"]
fn child_process_entry() {
    let Ok(args) = std::env::var(CHILD_ARGS_ENV) else {
        return;
    };
    let args: Vec<String> = args.split(SEP).map(String::from).collect();
    let code = match commit_crash::run(&args, &spawn) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("child {args:?}: {e}");
            2
        }
    };
    std::process::exit(code);
}

fn spawn(args: &[String]) -> Command {
    let exe = std::env::current_exe().expect("test binary path");
    let mut command = Command::new(exe);
    command
        .args([
            "--exact",
            "child_process_entry",
            "--ignored",
            "--nocapture",
            "--quiet",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ARGS_ENV, args.join(&SEP.to_string()));
    command
}

fn scenario(name: &'static str) -> Report {
    let report = commit_crash::demo(name, &spawn, false, true).expect("the scenario ran");
    // Shown with `--nocapture`, and on failure.
    println!("{report}");
    report
}

fn said(r: &Report, node: u64, life: u32, prefix: &str) -> bool {
    r.transcript
        .iter()
        .any(|(n, l, line)| *n == node && *l == life && line.starts_with(prefix))
}

/// Checks shared by the scenarios: the stopped node was killed by SIGKILL
/// at its point, restarted as a new incarnation, and every node reached
/// the expected outcome.
fn common(r: &Report, victim: u64, point: &str) {
    let (killed, how) = r.killed.clone().expect("a node was killed");
    assert_eq!(killed, victim, "{r}");
    assert_eq!(how, "killed by signal 9", "{r}");
    assert!(said(r, victim, 0, &format!("stopped {point}")), "{r}");
    assert!(said(r, victim, 1, "up "), "{r}");
    assert!(
        said(r, victim, 1, "up 2PC incarnation 1") || said(r, victim, 1, "up 3PC incarnation 1"),
        "the restart is the next incarnation: {r}"
    );
    let expected: std::collections::BTreeMap<u64, String> = r
        .expected()
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
    assert_eq!(r.outcomes, expected, "{r}");
}

/// 2PC, the coordinator killed with every participant READY and its
/// decision not logged: the participants block (cooperative termination
/// finds everyone READY) and say on whom; after the restart the
/// coordinator finds BEGIN without a decision and aborts; the operator's
/// guess at node 3 is reported as heuristic.
#[test]
fn two_phase_coordinator_killed_before_its_decision_blocks_then_aborts() {
    let r = scenario("before-decision");
    common(&r, 0, "before-decision");
    for n in 1..4 {
        assert_eq!(
            r.blocked.get(&n).map(String::as_str),
            Some("coordinator n0"),
            "n{n} blocked on the coordinator: {r}"
        );
        assert!(
            said(&r, n, 0, "resource: prepare tx \"t1\" -> vote Commit"),
            "{r}"
        );
    }
    assert_eq!(r.recovered, vec!["tx \"t1\" Coordinator undecided"], "{r}");
    assert!(said(
        &r,
        3,
        0,
        "resource: abort tx \"t1\" -> Heuristic(Commit)"
    ));
    // Blocked means no participant decided while the coordinator was down.
    let restart = r
        .transcript
        .iter()
        .position(|(n, l, _)| *n == 0 && *l == 1)
        .expect("restarted");
    assert!(
        !r.transcript[..restart]
            .iter()
            .any(|(n, _, line)| *n != 0 && line.starts_with("resource: abort")),
        "no participant aborted before the coordinator came back: {r}"
    );
}

/// 2PC, the coordinator killed once its commit decision is durable but
/// before it sent it: the participants block; the restarted coordinator
/// finds the decision in its log and everyone commits.
#[test]
fn two_phase_coordinator_killed_after_its_decision_blocks_then_commits() {
    let r = scenario("after-decision");
    common(&r, 0, "after-decision");
    for n in 1..4 {
        assert_eq!(
            r.blocked.get(&n).map(String::as_str),
            Some("coordinator n0"),
            "{r}"
        );
    }
    assert_eq!(r.recovered, vec!["tx \"t1\" Coordinator commit"], "{r}");
}

/// 2PC, a participant killed once its COMMIT is durable, before its
/// resource committed: restarted, it finds COMMIT in its log and commits
/// the resource then.
#[test]
fn two_phase_participant_killed_after_its_commit_record_commits_its_resource_on_restart() {
    let r = scenario("after-commit");
    common(&r, 1, "after-commit");
    assert!(!said(&r, 1, 0, "resource: commit"), "{r}");
    assert!(said(&r, 1, 1, "resource: commit tx \"t1\" -> Done"), "{r}");
    assert_eq!(r.recovered, vec!["tx \"t1\" Participant commit"], "{r}");
}

/// 3PC, the coordinator killed with every participant READY before
/// PRECOMMIT: the participants terminate without it (abort), and the
/// restarted coordinator aborts too.
#[test]
fn three_phase_participants_terminate_while_the_coordinator_is_down() {
    let r = scenario("before-precommit");
    common(&r, 0, "before-precommit");
    assert_eq!(r.decided_while_down, [1, 2, 3].into_iter().collect(), "{r}");
    assert!(r.blocked.is_empty(), "3PC does not block here: {r}");
    assert_eq!(r.recovered, vec!["tx \"t1\" Coordinator undecided"], "{r}");
}
