//! Running the `ft` binary from the tests.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// What a run of `ft` did.
pub(crate) struct Run {
    /// The exit code (`None` if a signal ended the process).
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs `ft` with `args`; if it is still running after `limit`, kills it
/// and fails the test.
pub(crate) fn ft_within(args: &[&str], limit: Duration) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ft"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ft runs");
    fn drain(mut from: impl Read + Send + 'static) -> thread::JoinHandle<String> {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = from.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    }
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("ft can be waited for") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`ft {}` ran for more than {limit:?}", args.join(" "));
        }
        thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code(),
        stdout: stdout.join().expect("stdout read"),
        stderr: stderr.join().expect("stderr read"),
    }
}

/// How long a run whose arguments are out of range may take (a debug build
/// on a busy machine): far less than one that ran away.
pub(crate) const QUICK: Duration = Duration::from_secs(20);

/// Runs `ft` with `args`: whether it succeeded, and stdout then stderr.
pub(crate) fn ft(args: &[&str]) -> (bool, String) {
    let run = ft_within(args, Duration::from_secs(300));
    (run.code == Some(0), run.stdout + &run.stderr)
}

/// Asserts that clap refuses `args`: exit code 2, nothing on stdout, an
/// `error:` line that names `flag`, and the usage of the subcommand.
pub(crate) fn refused(args: &[&str], flag: &str) {
    let run = ft_within(args, QUICK);
    let error = run.stderr.lines().find(|l| l.starts_with("error:"));
    let usage = format!("Usage: ft {}", args[0]);
    assert!(
        run.code == Some(2)
            && run.stdout.is_empty()
            && error.is_some_and(|l| l.contains(flag))
            && run.stderr.contains(&usage),
        "`ft {}` was not refused for {flag}: exit {:?}\n{}{}",
        args.join(" "),
        run.code,
        run.stdout,
        run.stderr
    );
}

/// Runs `ft` with `args`, which must succeed quickly with exactly the
/// `note:` lines `notes` on stderr; returns stdout.
pub(crate) fn quick(args: &[&str], notes: &[&str]) -> String {
    let run = ft_within(args, QUICK);
    assert_eq!(
        run.code,
        Some(0),
        "`ft {}` failed:\n{}{}",
        args.join(" "),
        run.stdout,
        run.stderr
    );
    let got: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("note:"))
        .collect();
    assert_eq!(got, notes, "`ft {}`:\n{}", args.join(" "), run.stderr);
    run.stdout
}
