//! Fault plans shared by the simulation tests.
#![allow(dead_code)]

use std::time::Duration;

use ft_core::{NodeId, Omission};
use ft_sim::{Delay, FaultPlan, NetworkFaults, OmissionWindow, RandomCrashes};

/// Loss, duplication, reordering and corruption on every link, until
/// `calm`.
pub(crate) fn lossy(calm: Duration) -> NetworkFaults {
    NetworkFaults {
        delay: Delay::Uniform {
            min: Duration::from_micros(500),
            max: Duration::from_millis(3),
        },
        loss: 0.05,
        duplicate: 0.02,
        reorder: 0.1,
        reorder_window: Duration::from_millis(10),
        corrupt: 0.005,
        calm_after: Some(calm),
    }
}

/// Every fault but value failures (a wrong payload inside a valid frame is
/// not a fault reliable multicast can see): crashes and restarts of one
/// member at a time (not nodes 0 and 1), a slow member, send and receive
/// omission windows, a partition that heals, on a lossy network.
pub(crate) fn hostile(n: usize, horizon: Duration, calm: Duration) -> FaultPlan {
    let mut plan = FaultPlan {
        network: lossy(calm),
        ..FaultPlan::default()
    };
    plan.node(NodeId(2)).slow = Some(Delay::Exponential {
        min: Duration::ZERO,
        mean: Duration::from_millis(20),
    });
    plan.node(NodeId(2)).omission_windows.push(OmissionWindow {
        from: horizon / 5,
        until: horizon / 5 + horizon / 20,
        kind: Omission::Send,
    });
    plan.node(NodeId(3)).omission_windows.push(OmissionWindow {
        from: horizon * 3 / 5,
        until: horizon * 3 / 5 + horizon / 20,
        kind: Omission::Receive,
    });
    let (a, b): (Vec<_>, Vec<_>) = (0..n as u64).map(NodeId).partition(|n| n.0 % 2 == 0);
    plan.partition(vec![a, b], horizon * 2 / 5, horizon / 2);
    plan.random_crashes = Some(RandomCrashes {
        mean_interval: horizon / 6,
        downtime: Some(Delay::Uniform {
            min: Duration::from_millis(50),
            max: Duration::from_millis(500),
        }),
        max_down: 1,
        spare: vec![NodeId(0), NodeId(1)],
    });
    plan
}

/// [`hostile`], but with crashes that stop at `horizon`: one member at a
/// time among nodes 2.. crashes about every `horizon / 6` and restarts
/// 50–500 ms later (drawn from `seed`), so every member is up once the
/// faults end and liveness can be asserted on every run.
pub(crate) fn hostile_then_calm(seed: u64, n: usize, horizon: Duration) -> FaultPlan {
    let mut plan = hostile(n, horizon, horizon);
    plan.random_crashes = None;
    // A small generator of our own: the plan is built before the run.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |below: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % below
    };
    let mut at = Duration::ZERO;
    loop {
        at += Duration::from_millis(1 + next(horizon.as_millis() as u64 / 3));
        let down = Duration::from_millis(50 + next(450));
        if at + down >= horizon {
            return plan;
        }
        let node = NodeId(2 + next(n as u64 - 2));
        plan.crash(node, at, Some(down));
        at += down;
    }
}

/// Seeds per sweep: `FT_MCAST_SEEDS` if set (CI's release sweep sets
/// hundreds), else `default`.
pub(crate) fn seeds(default: u64) -> u64 {
    std::env::var("FT_MCAST_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
