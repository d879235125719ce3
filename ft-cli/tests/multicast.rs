//! The multicast scenario of `ft demo` and `ft sim multicast`, end to end.

mod common;

use common::{ft, quick, refused};

fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.trim_start().starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{text}"))
}

/// The number before `what` in `line` ("12 requests held back" → 12).
fn count(line: &str, what: &str) -> u64 {
    let before = &line[..line
        .find(what)
        .unwrap_or_else(|| panic!("{what:?} in {line}"))];
    before
        .split_whitespace()
        .last()
        .and_then(|w| w.trim_start_matches('(').trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("a number before {what:?} in {line}"))
}

/// The milliseconds at the start of `text` ("1125 ms, ..." → 1125).
fn ms(text: &str) -> u64 {
    text.split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("milliseconds in {text}"))
}

/// The multicast section of `ft demo`.
fn section(text: &str) -> &str {
    let at = text
        .find("reliable multicast:")
        .unwrap_or_else(|| panic!("no multicast section in:\n{text}"));
    &text[at..]
}

#[test]
fn the_demo_shows_one_lost_packet_its_requests_the_suppressed_and_the_repair() {
    for seed in ["1", "4"] {
        let (ok, text) = ft(&[
            "demo",
            "--seed",
            seed,
            "--seeds",
            "0",
            "--duration-ms",
            "500",
        ]);
        assert!(ok, "{text}");
        let m = section(&text);
        // The receivers under the first router lost it, and ft-sim says so.
        let lost = line(m, "lost:");
        assert!(lost.contains("at 10 receivers: n1 n2 n3"), "{lost}");
        let requests = line(m, "requests");
        let sent = count(requests, "sent:");
        assert!(sent >= 1, "{requests}");
        // Each request is named: by whom, for what, when.
        assert_eq!(
            requests.matches(" #10 at ").count() as u64,
            sent,
            "{requests}"
        );
        // Suppression worked: fewer requests than receivers that lost it,
        // and some held back.
        assert!(sent < 10, "{requests}");
        let suppressed = line(m, "suppressed:");
        assert!(count(suppressed, "requests held back") > 0, "{suppressed}");
        let repairs = line(m, "repairs,");
        assert!(count(repairs, "sent:") >= 1, "{repairs}");
        assert!(repairs.contains("#10 at "), "{repairs}");
        // No request goes at once: the gap shows when #11 comes, 10 ms
        // after #10 left, and a request then waits at least SRM's c1 = 2
        // distances, each at least the network's 1 ms (virtual time).
        let dropped_at = ms(lost.split("sent at ").nth(1).expect("sent at"));
        let first = ms(requests.split(" #10 at ").nth(1).expect("a request"));
        assert!(first >= dropped_at + 12, "{m}");
        let delivered = line(m, "delivered:");
        assert!(
            delivered.contains("2020 of 2020: every member has every message"),
            "{delivered}"
        );
        assert!(line(m, "invariants:").ends_with("held"), "{m}");
        // The reproduce line reruns the same run.
        let again = line(m, "reproduce:")
            .trim_start()
            .trim_start_matches("reproduce: ft ")
            .split(' ')
            .collect::<Vec<_>>();
        let (ok, rerun) = ft(&again);
        assert!(ok, "{rerun}");
        assert_eq!(
            count(line(&rerun, "feedback:"), "NACKs/requests"),
            sent,
            "{rerun}"
        );
        assert!(line(&rerun, "network:").contains("10 of them n0's #10 on purpose"));
    }
}

#[test]
fn every_strategy_and_order_delivers_everything_under_loss() {
    let mut loads = Vec::new();
    for strategy in ["ack", "nack", "tree", "nack-fec"] {
        for order in ["fifo", "causal", "agreed", "safe"] {
            let (ok, text) = ft(&[
                "sim",
                "multicast",
                "--strategy",
                strategy,
                "--order",
                order,
                "--receivers",
                "20",
                "--senders",
                "3",
                "--messages",
                "30",
                "--loss",
                "0.1",
                "--seed",
                "5",
            ]);
            assert!(ok, "{strategy} {order}: {text}");
            assert!(
                line(&text, "delivered:").contains("1890 of 1890: every member has every message"),
                "{text}"
            );
            // The loss was injected, and repaired.
            assert!(count(line(&text, "network:"), "lost") > 0, "{text}");
            let feedback = line(&text, "feedback:");
            if strategy == "nack-fec" {
                // Parity rebuilds the losses, mostly with no feedback.
                assert!(count(feedback, "messages rebuilt") > 0, "{feedback}");
            } else {
                assert!(count(feedback, "repairs") > 0, "{feedback}");
            }
            let invariants = line(&text, "invariants:");
            assert!(invariants.ends_with("held"), "{invariants}");
            if order != "fifo" {
                assert!(invariants.contains("causal order"), "{invariants}");
                assert!(count(invariants, "causal deliveries checked") > 0);
            }
            if order == "agreed" || order == "safe" {
                assert!(invariants.contains("one total order"), "{invariants}");
                assert!(count(invariants, "at a position") > 0, "{invariants}");
            }
            // What each strategy is about.
            // "n0 received R messages for the S it sent: L per message".
            let load: f64 = line(&text, "source load:")
                .split(": ")
                .nth(2)
                .and_then(|l| l.split(' ').next())
                .and_then(|l| l.parse().ok())
                .unwrap_or_else(|| panic!("a load in {text}"));
            loads.push((strategy, order, load));
            match strategy {
                "ack" => assert!(count(feedback, "acknowledgements") > 0),
                "nack" => assert!(count(feedback, "requests,") > 0, "{feedback}"),
                "nack-fec" => assert!(count(feedback, "parity packets sent") > 0),
                _ => assert!(count(feedback, "repairs by coordinators") > 0),
            }
            assert!(
                line(&text, "reproduce:").contains(&format!(
                    "--strategy {strategy} --receivers 20 --senders 3 --messages 30 --loss 0.1 --order {order} --seed 5"
                )),
                "{text}"
            );
        }
    }
    // The source hears from every receiver with ACKs, from its children
    // only with the tree.
    let load = |s: &str| {
        loads
            .iter()
            .filter(|l| l.0 == s)
            .map(|l| l.2)
            .fold(0.0, f64::max)
    };
    assert!(load("tree") * 2.0 < load("ack"), "{loads:?}");
}

#[test]
fn a_dropped_message_is_repaired_under_every_strategy() {
    for strategy in ["ack", "nack", "tree", "nack-fec"] {
        let (ok, text) = ft(&[
            "sim",
            "multicast",
            "--strategy",
            strategy,
            "--receivers",
            "20",
            "--messages",
            "10",
            "--loss",
            "0",
            "--drop-message",
            "5",
        ]);
        assert!(ok, "{strategy}: {text}");
        let network = line(&text, "network:");
        assert!(
            network.ends_with("10 lost (10 of them n0's #5 on purpose)"),
            "{network}"
        );
        assert!(
            line(&text, "delivered:").contains("210 of 210: every member has every message"),
            "{text}"
        );
    }
}

#[test]
fn bad_arguments_are_refused_with_the_usage() {
    for (flag, value) in [
        ("--strategy", "gossip"),
        ("--order", "total-chaos"),
        ("--receivers", "0"),
        ("--receivers", "1001"),
        ("--senders", "0"),
        ("--loss", "0.6"),
        ("--loss=-0.1", ""),
        ("--loss", "x"),
        ("--messages", "1.5"),
        ("--seed", "18446744073709551616"),
        ("--drop-message", "one"),
    ] {
        let mut args = vec!["sim", "multicast", flag];
        if !value.is_empty() {
            args.push(value);
        }
        refused(&args, flag.split('=').next().unwrap());
    }
    let help = quick(&["sim", "multicast", "--help"], &[]);
    for needed in [
        "ack",
        "nack",
        "tree",
        "fifo",
        "causal",
        "1 to 1000",
        "0 to 0.5",
    ] {
        assert!(help.contains(needed), "{needed} in {help}");
    }
}

#[test]
fn work_beyond_the_budget_is_clamped_and_said() {
    let out = quick(
        &[
            "sim",
            "multicast",
            "--receivers",
            "3",
            "--senders",
            "9",
            "--messages",
            "2",
            "--drop-message",
            "7",
        ],
        &[
            "note: --senders 9 clamped to 4 (the members)",
            "note: --drop-message 7 clamped to 2 (the messages)",
        ],
    );
    assert!(
        line(&out, "reproduce:").contains("--senders 4 --messages 2"),
        "{out}"
    );
}
