//! RPC across processes over UDP on loopback, with the server killed
//! (SIGKILL) and restarted in the middle of the client's calls: the
//! scenario of `examples/rpc_udp.rs`, run as a test and checked.
//!
//! # How it runs
//!
//! The example's code is compiled into this test as a module, and the test
//! binary re-runs itself as the server and client processes (as
//! ft-storage's kill test does): the parent starts `current_exe() --exact
//! child_process_entry --ignored …` with [`CHILD_ARGS_ENV`] holding the
//! example's command line, and the `#[ignore]`d test `child_process_entry`
//! (a no-op without that variable) becomes the server or the client. Each
//! child watches its stdin and exits when the parent goes away.
//!
//! What is checked after the run, from the client's results, the server's
//! execution log (one synced line per execution, naming the server life)
//! and the completion records in the server's stable log:
//!
//! - exactly-once: every call is answered, each by exactly one durable
//!   completion record, and no call is executed after its record was
//!   durable;
//! - at-most-once: no call is executed twice, and the calls the crash
//!   caught fail with `ServerCrashed` rather than being executed again.

#[path = "../examples/rpc_udp.rs"]
#[allow(dead_code)]
mod rpc_udp;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use ft_rpc::rpc::Semantics;
use rpc_udp::{DemoOpts, Outcome, Report};

/// Set (to the child's arguments, separated by [`SEP`]) only in a child.
const CHILD_ARGS_ENV: &str = "FT_RPC_UDP_CHILD_ARGS";
const SEP: char = '\u{1f}';

/// The child's side; a no-op unless started by [`spawn`].
#[test]
#[ignore = "runs only as a child process of the multi-process tests"]
fn child_process_entry() {
    let Ok(args) = std::env::var(CHILD_ARGS_ENV) else {
        return;
    };
    let args: Vec<String> = args.split(SEP).map(String::from).collect();
    let code = match rpc_udp::run(&args, &spawn) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("child {args:?}: {e}");
            2
        }
    };
    std::process::exit(code);
}

/// This test binary, running `child_process_entry` with `args`.
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

fn scenario(semantics: Semantics, calls: u64) -> Report {
    let opts = DemoOpts {
        calls,
        in_flight: 4,
        down: Duration::from_millis(400),
        dir: None,
        keep: false,
        verbose: false,
        quiet: true,
    };
    let report = rpc_udp::demo(&opts, semantics, &spawn).expect("the scenario ran");
    // Shown with `--nocapture`, and on failure.
    println!("{report}");
    assert_eq!(report.lives, vec![0, 1], "one kill, one restart:\n{report}");
    assert_eq!(report.outcomes.len() as u64, calls, "{report}");
    assert!(report.violations.is_empty(), "{report}");
    report
}

#[test]
fn exactly_once_answers_every_call_once_across_a_server_kill() {
    let calls = 150;
    let report = scenario(Semantics::ExactlyOnce, calls);
    assert_eq!(
        report.answered() as u64,
        calls,
        "every call answered:\n{report}"
    );
    assert_eq!(
        report.answered_with_one_record() as u64,
        calls,
        "one durable completion record per answered call:\n{report}"
    );
    assert_eq!(report.calls_with_several_records(), 0, "{report}");
    // Exactly one execution per call: the executions are the calls'
    // effects, durable with their completion records.
    assert_eq!(report.executed_twice(), 0, "{report}");
    for i in 0..calls {
        assert_eq!(
            report.executions.get(&i).map(Vec::len),
            Some(1),
            "call {i}:\n{report}"
        );
    }
}

#[test]
fn at_most_once_never_executes_a_call_twice_across_a_server_kill() {
    let calls = 150;
    let report = scenario(Semantics::AtMostOnce, calls);
    assert_eq!(report.executed_twice(), 0, "{report}");
    for (i, outcome) in &report.outcomes {
        match outcome {
            Outcome::Answered(_) => {}
            Outcome::Failed(class) => assert!(
                class.starts_with("server-crashed"),
                "call {i} failed with {class}, not ServerCrashed:\n{report}"
            ),
            Outcome::Wrong(reply) => panic!("call {i}: wrong reply {reply:?}\n{report}"),
        }
    }
}

/// The checks themselves, on made-up runs: each violation they exist for
/// is reported, and a legitimate re-execution is not.
#[test]
fn the_checks_catch_what_they_are_for() {
    let report = |semantics,
                  outcomes: &[(u64, Outcome)],
                  executions: &[(u64, &[u64])],
                  records: &[(u64, &[u64])]| {
        let mut r = Report {
            semantics,
            calls: outcomes.len() as u64,
            in_flight: 1,
            killed_after: 1,
            down: Duration::ZERO,
            elapsed: Duration::ZERO,
            outcomes: outcomes.iter().cloned().collect(),
            after_kill: BTreeSet::new(),
            lives: vec![0, 1],
            executions: executions.iter().map(|(i, l)| (*i, l.to_vec())).collect(),
            torn_lines: 0,
            records: records
                .iter()
                .map(|(i, l)| (*i, l.to_vec()))
                .collect::<BTreeMap<_, _>>(),
            violations: Vec::new(),
        };
        r.check();
        r.violations
    };
    let ok = Outcome::Answered;
    // Exactly-once: one execution (its effect) and one record, by the life
    // that answered: fine.
    assert!(
        report(
            Semantics::ExactlyOnce,
            &[(0, ok(1))],
            &[(0, &[1])],
            &[(0, &[1])]
        )
        .is_empty()
    );
    // Two durable executions of one call.
    assert!(
        !report(
            Semantics::ExactlyOnce,
            &[(0, ok(1))],
            &[(0, &[0, 1])],
            &[(0, &[1])]
        )
        .is_empty()
    );
    // Executed again after life 0's record was durable.
    assert!(
        !report(
            Semantics::ExactlyOnce,
            &[(0, ok(0))],
            &[(0, &[0, 1])],
            &[(0, &[0])]
        )
        .is_empty()
    );
    // Two durable completion records (and the answer matches neither alone).
    assert!(
        !report(
            Semantics::ExactlyOnce,
            &[(0, ok(1))],
            &[(0, &[0, 1])],
            &[(0, &[0, 1])]
        )
        .is_empty()
    );
    // Answered without a durable record.
    assert_eq!(
        report(Semantics::ExactlyOnce, &[(0, ok(0))], &[(0, &[0])], &[]).len(),
        1
    );
    // Answered by a life that never executed it.
    assert!(!report(Semantics::AtLeastOnce, &[(0, ok(1))], &[(0, &[0])], &[]).is_empty());
    // At-most-once: twice is a violation, a crash-failed call is not.
    assert_eq!(
        report(Semantics::AtMostOnce, &[(0, ok(1))], &[(0, &[0, 1])], &[]).len(),
        1
    );
    let crashed = Outcome::Failed("server-crashed(executed:unknown)".into());
    assert!(report(Semantics::AtMostOnce, &[(0, crashed)], &[(0, &[0])], &[]).is_empty());
    // A call the client never reported.
    let mut missing = Report {
        semantics: Semantics::AtLeastOnce,
        calls: 2,
        in_flight: 1,
        killed_after: 1,
        down: Duration::ZERO,
        elapsed: Duration::ZERO,
        outcomes: BTreeMap::from([(0, ok(0))]),
        after_kill: BTreeSet::new(),
        lives: vec![0],
        executions: BTreeMap::from([(0, vec![0])]),
        torn_lines: 0,
        records: BTreeMap::new(),
        violations: Vec::new(),
    };
    missing.check();
    assert_eq!(missing.violations.len(), 1);
}
