//! Any sequence of append / crash / reopen / truncate_prefix gives the same
//! readable contents as a simple model, on MemLog and on FileLog.

use bytes::Bytes;
use ft_core::{Lsn, StableLog, StorageError};
use ft_storage::testdir::TestDir;
use ft_storage::{FileLog, FileLogOptions, MemLog};
use futures::executor::block_on;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// Append records of these sizes in one call.
    Append(Vec<usize>),
    /// The process dies (nothing unacknowledged is pending: appends block).
    Crash,
    /// Close and open again.
    Reopen,
    /// Discard records before `start + n`.
    Truncate(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(0usize..700, 1..6).prop_map(Op::Append),
        1 => Just(Op::Crash),
        1 => Just(Op::Reopen),
        1 => (0u64..12).prop_map(Op::Truncate),
    ]
}

/// The model: a start and every record ever appended.
#[derive(Default)]
struct Model {
    start: u64,
    records: Vec<Bytes>,
}

impl Model {
    fn visible(&self) -> Vec<(Lsn, Bytes)> {
        self.records
            .iter()
            .enumerate()
            .skip(self.start as usize)
            .map(|(i, r)| (Lsn(i as u64), r.clone()))
            .collect()
    }
}

fn body(lsn: u64, size: usize) -> Bytes {
    Bytes::from(
        (0..size)
            .map(|i| (lsn as usize * 31 + i) as u8)
            .collect::<Vec<_>>(),
    )
}

/// Runs `ops` against a log built by `open`, comparing with the model after
/// every step.
fn check<L: StableLog>(
    ops: &[Op],
    mut open: impl FnMut(Option<L>, bool) -> L,
) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    let mut log = open(None, false);
    for op in ops {
        match op {
            Op::Append(sizes) => {
                let next = model.records.len() as u64;
                let recs: Vec<Bytes> = sizes
                    .iter()
                    .enumerate()
                    .map(|(i, &s)| body(next + i as u64, s))
                    .collect();
                let first = block_on(log.append(&recs)).unwrap();
                prop_assert_eq!(first, Lsn(next));
                model.records.extend(recs);
            }
            Op::Crash => log = open(Some(log), true),
            Op::Reopen => log = open(Some(log), false),
            Op::Truncate(n) => {
                let upto = model.start + n;
                let got = block_on(log.truncate_prefix(Lsn(upto)));
                if upto > model.records.len() as u64 {
                    prop_assert!(
                        matches!(got, Err(StorageError::Rejected(_))),
                        "past the end: {:?}",
                        got
                    );
                } else {
                    model.start = upto.max(model.start);
                    prop_assert_eq!(got.unwrap(), Lsn(model.start));
                }
            }
        }
        prop_assert_eq!(
            block_on(log.read_from(Lsn(0))).unwrap(),
            model.visible(),
            "after {:?}",
            op
        );
        prop_assert_eq!(
            block_on(log.next_lsn()).unwrap(),
            Lsn(model.records.len() as u64)
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn mem_log_matches_the_model(ops in proptest::collection::vec(op(), 1..25)) {
        check::<MemLog>(&ops, |old, crash| match old {
            None => MemLog::new(),
            Some(log) => {
                if crash {
                    assert_eq!(log.crash(), 0, "appends were durable");
                }
                log
            }
        })?;
    }

    #[test]
    fn file_log_matches_the_model(ops in proptest::collection::vec(op(), 1..25)) {
        let dir = TestDir::new("model");
        let opts = || FileLogOptions { segment_size: 2048, ..FileLogOptions::default() };
        check::<FileLog>(&ops, |old, _crash| {
            // Dropping the handle is the process dying: nothing is pending
            // (appends returned), and what was written is in the page cache.
            drop(old);
            FileLog::open(dir.path(), opts()).unwrap()
        })?;
    }
}
