//! Running the `ft` binary from the tests.

use std::process::Command;

/// Runs `ft` with `args`: whether it succeeded, and stdout then stderr.
pub(crate) fn ft(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ft"))
        .args(args)
        .output()
        .expect("ft runs");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}
