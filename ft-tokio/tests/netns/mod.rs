//! Running one test again inside a private network namespace, for what the
//! host's own network cannot show (a multicast route on loopback, a small
//! loopback MTU). Needs root, `unshare` and `ip`; the caller skips, saying
//! why, when they are missing.
#![allow(dead_code)]

use std::process::Command;

/// Set in the environment of a test run inside its namespace.
pub(crate) const INNER: &str = "FT_TEST_IN_NETNS";

/// Set (to anything) to run the namespace path even where the host's own
/// network would do: how to check that path on a host that does not need
/// it.
pub(crate) const FORCE: &str = "FT_TEST_FORCE_NETNS";

/// Whether this process is a test run inside its namespace.
pub(crate) fn inside() -> bool {
    std::env::var_os(INNER).is_some()
}

/// Whether the caller asked for the namespace path.
pub(crate) fn forced() -> bool {
    std::env::var_os(FORCE).is_some()
}

/// Runs the test `name` of this test binary again, alone, in a new network
/// namespace where the shell commands `setup` ran first (its loopback is
/// down until `setup` brings it up).
///
/// `Err` says why it could not (not root, no `unshare` or `ip`, namespaces
/// refused); a run that started and failed panics, with its output above.
pub(crate) fn rerun(name: &str, setup: &str) -> Result<(), String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("cannot run `id`: {e}"))?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("a private network namespace needs root".into());
    }
    for tool in ["unshare", "ip"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!("`{tool}` is not installed"));
        }
    }
    // Namespaces may be refused (a container without CAP_SYS_ADMIN).
    let probe = Command::new("unshare")
        .args(["--net", "--", "true"])
        .output()
        .map_err(|e| format!("cannot run `unshare`: {e}"))?;
    if !probe.status.success() {
        return Err(format!(
            "`unshare --net` refused: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    let exe = std::env::current_exe().map_err(|e| format!("no path to this test: {e}"))?;
    eprintln!("running {name} inside a private network namespace ({setup})");
    let status = Command::new("unshare")
        .args(["--net", "--", "sh", "-ec"])
        .arg(format!(
            "{setup}; exec \"$0\" --exact {name} --nocapture --test-threads=1"
        ))
        .arg(exe)
        .env(INNER, "1")
        .status()
        .map_err(|e| format!("cannot run `unshare`: {e}"))?;
    assert!(
        status.success(),
        "{name} failed inside its network namespace ({status})"
    );
    Ok(())
}
