//! loom models of the `MemChannel` inbox: every interleaving (up to a bounded
//! number of preemptions) of senders, receivers and close.
//!
//! Run with
//! `RUSTFLAGS="--cfg ft_loom" cargo test -p ft-core --release --test loom_mem`.
#![cfg(ft_loom)]

use bytes::Bytes;
use ft_core::{Channel, ChannelError, MemNetwork, NodeId};
use loom::future::block_on;
use loom::sync::Arc;
use loom::thread;

/// Small models, bounded preemptions: the bugs these look for (a lost
/// wake-up, a datagram delivered twice or never) need only one or two
/// preemptions at the wrong place.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

#[test]
fn a_datagram_sent_while_the_receiver_registers_is_never_lost() {
    model(|| {
        let net = MemNetwork::new(4);
        let rx = net.join(NodeId(1));
        let tx = net.join(NodeId(2));
        let sender = thread::spawn(move || {
            block_on(tx.send(NodeId(1), b("x"))).unwrap();
        });
        // If the waker registration could miss the push, this would park
        // forever and loom would report a deadlock.
        assert_eq!(block_on(rx.recv()), Ok((NodeId(2), b("x"))));
        sender.join().unwrap();
    });
}

#[test]
fn two_concurrent_senders_are_each_received_exactly_once() {
    model(|| {
        let net = MemNetwork::new(4);
        let rx = net.join(NodeId(1));
        let senders: Vec<_> = [(2, "a"), (3, "b")]
            .into_iter()
            .map(|(id, payload)| {
                let tx = net.join(NodeId(id));
                thread::spawn(move || {
                    // Dropping `tx` afterwards (it closes) must not take
                    // back a datagram already handed over.
                    block_on(tx.send(NodeId(1), b(payload))).unwrap();
                })
            })
            .collect();
        let mut got = vec![block_on(rx.recv()).unwrap(), block_on(rx.recv()).unwrap()];
        got.sort();
        assert_eq!(got, vec![(NodeId(2), b("a")), (NodeId(3), b("b"))]);
        for s in senders {
            s.join().unwrap();
        }
        assert_eq!(rx.try_recv(), Ok(None), "nothing delivered twice");
        assert_eq!(net.stats().delivered, 2);
    });
}

#[test]
fn close_concurrent_with_send_never_hangs_a_receiver() {
    model(|| {
        let net = MemNetwork::new(4);
        let rx = Arc::new(net.join(NodeId(1)));
        let tx = net.join(NodeId(2));

        let receiver = {
            let rx = Arc::clone(&rx);
            thread::spawn(move || block_on(rx.recv()))
        };
        let sender = thread::spawn(move || block_on(tx.send(NodeId(1), b("x"))));
        rx.close();

        let sent = sender.join().unwrap();
        // Closed first: the node is gone. Otherwise it was handed over.
        assert!(
            matches!(sent, Ok(()) | Err(ChannelError::Unreachable(NodeId(1)))),
            "{sent:?}"
        );
        // The pending receiver always finishes: with the datagram, which
        // means it was sent, or with Closed.
        match receiver.join().unwrap() {
            Ok(got) => {
                assert_eq!(got, (NodeId(2), b("x")));
                assert_eq!(sent, Ok(()));
            }
            Err(e) => assert_eq!(e, ChannelError::Closed),
        }
        assert_eq!(block_on(rx.recv()), Err(ChannelError::Closed));
    });
}
