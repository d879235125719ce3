//! ft-commit's decoders on hostile bytes: 2PC's `Message` and `LogRecord`,
//! 3PC's `Message3` and `Record3` (bare and through ft-core's record
//! header, as recovery reads them). Never panic, and what they accept
//! re-encodes to the bytes it came from. Accepted messages are then fed to
//! a 2PC or 3PC node (coordinator of a transaction, participant in
//! another), from a participant and from a stranger, with its timers fired
//! and its persists completed: no panic there either. The 3PC node runs
//! twice: as configured by default and compacting after every record while
//! keeping no finished transaction (snapshots cut, outcomes forgotten). A
//! decoded `Record3` (a snapshot included) is also recovered from: an
//! error or a node, never a panic.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_commit::{
    Input, LogRecord, Message, Message3, Record3, ThreePhase, ThreePhaseConfig, Timer, Timer3,
    TwoPhase, TwoPhaseConfig, TxId,
};
use ft_core::record::{decode, encode};
use ft_core::{Incarnation, NodeId, Output, Protocol, Recover, RecoveryContext, Wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(r) = LogRecord::from_bytes(bytes.clone()) {
        assert_eq!(&r.to_bytes()[..], data);
    }
    if let Ok(r) = Record3::from_bytes(bytes.clone()) {
        assert_eq!(&r.to_bytes()[..], data);
    }
    if let Ok(r) = decode::<LogRecord>(bytes.clone()) {
        assert_eq!(&encode(&r)[..], data);
    }
    if let Ok(r) = decode::<Record3>(bytes.clone()) {
        // Records of an older version still read, and are written back
        // in the current one: the record survives, not its bytes.
        assert_eq!(decode::<Record3>(encode(&r)).as_ref(), Ok(&r));
        let mut ctx = ctx(Instant::now());
        ctx.records = vec![encode(&r)];
        if let Ok(mut core) = ThreePhase::recover(&ThreePhaseConfig::default(), ctx) {
            settle(&mut core, Instant::now());
        }
    }
    if let Ok(m) = Message::from_bytes(bytes.clone()) {
        assert_eq!(&m.to_bytes()[..], data);
        two_phase(m);
    }
    if let Ok(m) = Message3::from_bytes(bytes) {
        assert_eq!(&m.to_bytes()[..], data);
        three_phase(m.clone(), ThreePhaseConfig::default());
        three_phase(
            m,
            ThreePhaseConfig {
                snapshot_every: 1,
                keep_finished: 0,
                ..ThreePhaseConfig::default()
            },
        );
    }
});

fn ctx(now: Instant) -> RecoveryContext {
    RecoveryContext {
        node: NodeId(1),
        incarnation: Incarnation(1),
        records: Vec::new(),
        seed: 0,
        now,
    }
}

/// Completes every persist the core asks for, dropping everything else.
fn settle<P: Protocol>(core: &mut P, now: Instant) {
    for _ in 0..8 {
        let mut tokens = Vec::new();
        while let Some(o) = core.poll_output() {
            if let Output::Persist { token, .. } = o {
                tokens.push(token);
            }
        }
        if tokens.is_empty() {
            return;
        }
        for t in tokens {
            core.handle_persisted(now, t);
        }
    }
}

fn begin(tx: &TxId) -> Input {
    Input::Begin {
        tx: tx.clone(),
        participants: vec![NodeId(1), NodeId(2), NodeId(3)],
    }
}

fn two_phase(msg: Message) {
    let now = Instant::now();
    let mut core = TwoPhase::recover(&TwoPhaseConfig::default(), ctx(now)).unwrap();
    let tx = msg.tx().clone();
    core.handle_input(now, begin(&tx));
    settle(&mut core, now);
    for from in [2, 0, 9] {
        core.handle_message(now, NodeId(from), msg.clone());
        settle(&mut core, now);
    }
    let later = now + Duration::from_secs(1);
    for t in [
        Timer::Votes(tx.clone()),
        Timer::Resend(tx.clone()),
        Timer::Prepare(tx.clone()),
        Timer::Decision(tx),
    ] {
        core.handle_timer(later, t);
        settle(&mut core, later);
    }
}

fn three_phase(msg: Message3, config: ThreePhaseConfig) {
    let now = Instant::now();
    let mut core = ThreePhase::recover(&config, ctx(now)).unwrap();
    let tx = msg.tx().clone();
    core.handle_input(now, begin(&tx));
    settle(&mut core, now);
    for from in [2, 0, 9] {
        core.handle_message(now, NodeId(from), msg.clone());
        settle(&mut core, now);
    }
    let later = now + Duration::from_secs(1);
    for t in [
        Timer3::Votes(tx.clone()),
        Timer3::Resend(tx.clone()),
        Timer3::Prepare(tx.clone()),
        Timer3::Decision(tx.clone()),
        Timer3::Collect(tx),
    ] {
        core.handle_timer(later, t);
        settle(&mut core, later);
    }
    assert!(core.participating().count() <= 1);
}
