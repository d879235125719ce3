//! The ranges of the numeric options.
//!
//! Every numeric option has a documented range, in its `--help` text. A
//! value that makes no sense (a probability of 1.5, a one-node cluster) or
//! that would change the scenario itself is refused by clap, with its usual
//! `error:` line and exit code 2. A value that only asks for more (or less)
//! work than the range allows (a longer run, more seeds, more calls) is
//! clamped into the range, and one `note:` line on stderr says so; the run
//! then prints the clamped value, so its reproduce line reproduces it.

use std::ops::RangeInclusive;

/// Parses a probability: at least 0 and below 1.
pub(crate) fn probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if (0.0..1.0).contains(&p) {
        // `abs` turns -0 into 0, and changes nothing else in the range.
        Ok(p.abs())
    } else {
        Err("a probability must be at least 0 and below 1".to_string())
    }
}

/// `value` of `--flag`, clamped into `range`; if it moved, a note on stderr
/// says so, with `why` (if any) in parentheses.
pub(crate) fn clamp(flag: &str, value: u64, range: RangeInclusive<u64>, why: &str) -> u64 {
    let clamped = value.clamp(*range.start(), *range.end());
    if clamped != value {
        if why.is_empty() {
            eprintln!("note: --{flag} {value} clamped to {clamped}");
        } else {
            eprintln!("note: --{flag} {value} clamped to {clamped} ({why})");
        }
    }
    clamped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_are_at_least_0_and_below_1() {
        assert_eq!(probability("0"), Ok(0.0));
        assert_eq!(probability("0.999"), Ok(0.999));
        for bad in ["1", "1.5", "-0.1", "NaN", "inf", "", "x"] {
            assert!(probability(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn clamp_keeps_values_in_range() {
        assert_eq!(clamp("x", 5, 1..=10, ""), 5);
        assert_eq!(clamp("x", 0, 1..=10, ""), 1);
        assert_eq!(clamp("x", u64::MAX, 1..=10, "why"), 10);
    }
}
