//! The real-network path: an ACK-based group of one sender and four
//! receivers, each in its own process, over ft-tokio's UDP channel on
//! loopback, with 1% of the datagrams every process receives dropped on
//! purpose. Every receiver must deliver every message, in order, intact
//! (each receiver process checks each delivery and fails the run on the
//! first wrong one), and the drops must have happened, and been repaired.
//!
//! Both fan-outs: unicast (`send_to_many` to four addresses) on the host's
//! loopback, and IP multicast in a private network namespace whose
//! loopback carries multicast (root, `unshare` and `ip`; where that is not
//! possible, on the host's loopback if multicast works there, and
//! "skipped: ..." otherwise).

mod net;

use std::process::Command;
use std::time::Duration;

use net::{Fanout, Setup};

/// Not a test: where a run starts this binary as one of its processes
/// (`net::ROLE` set), this is that process; otherwise it returns at once.
#[test]
fn role_process() {
    net::child_main();
}

/// This test binary, brought to [`role_process`] alone.
fn this_binary() -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", "role_process", "--nocapture", "--test-threads=1"]);
    c
}

/// Enough messages that each receiver drops some (at 1%, none of 2 000
/// datagrams dropped has probability 2·10⁻⁹), few enough for a debug
/// build: about a second.
const MESSAGES: u64 = 2_000;

fn one_percent_loss(fanout: Fanout) {
    let setup = Setup {
        fanout,
        loss_ppm: 10_000,
        count: MESSAGES,
        duration: None,
        rate: None,
        history: 256,
        ack_delay: Duration::from_millis(10),
        seed: 14,
        timeout: Duration::from_secs(60),
    };
    let out = net::run(&this_binary, &setup).unwrap_or_else(|e| panic!("{fanout:?}: {e}"));
    eprintln!("{fanout:?}: {out:?}");
    assert_eq!(out.sender.get("sent"), MESSAGES);
    assert_eq!(out.receivers.len(), net::RECEIVERS as usize);
    for (i, r) in out.receivers.iter().enumerate() {
        // In order and intact was checked by the receiver, on each one.
        assert_eq!(r.get("delivered"), MESSAGES, "receiver {}", i + 1);
        assert!(
            r.get("dropped") > 0,
            "no loss injected at receiver {}",
            i + 1
        );
        assert_eq!(r.get("decode_failures"), 0);
        if fanout == Fanout::Multicast {
            // The data came by multicast, not by the repairs alone.
            assert!(r.get("mcast_received") > 0, "receiver {}: {r:?}", i + 1);
        }
    }
    // What was dropped was sent again.
    assert!(out.sender.get("repairs") > 0, "{:?}", out.sender);
    let mcast_sent = out.sender.get("mcast_sent");
    match fanout {
        Fanout::Multicast => assert!(mcast_sent >= MESSAGES, "{:?}", out.sender),
        Fanout::Unicast => assert_eq!(mcast_sent, 0),
    }
}

#[test]
fn unicast_fanout_with_one_percent_loss_delivers_everything_in_order() {
    one_percent_loss(Fanout::Unicast);
}

#[test]
fn ip_multicast_with_one_percent_loss_delivers_everything_in_order() {
    const NAME: &str = "ip_multicast_with_one_percent_loss_delivers_everything_in_order";
    if net::netns_inside() {
        // Set up for multicast: unavailable is a failure here.
        one_percent_loss(Fanout::Multicast);
        return;
    }
    let args: Vec<String> = ["--exact", NAME, "--nocapture", "--test-threads=1"]
        .map(String::from)
        .into();
    match net::rerun_in_netns(&args) {
        Ok(status) => assert!(status.success(), "{NAME} failed in its network namespace"),
        Err(why) => match net::probe_multicast() {
            Ok(()) => one_percent_loss(Fanout::Multicast),
            Err(no) => eprintln!("skipped: {why}, and on the host: {no}"),
        },
    }
}
