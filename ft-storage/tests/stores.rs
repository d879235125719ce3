//! Behaviour of the file-backed stable stores: [`FileStore`] (one disk) and
//! [`MirroredStore`] (the subject's main + mirror disks), with damage done
//! to the real files on disk.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use bytes::Bytes;
use ft_core::{StableStore, StorageError};
use ft_storage::file_store::MAX_KEY_LEN;
use ft_storage::testdir::TestDir;
use ft_storage::{FileStore, MemStore, MirroredStore, RepairCounts, ScrubReport, copy};
use futures::executor::block_on;
use proptest::prelude::*;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Flips bit `bit` (modulo the file's size in bits) of the file at `path`.
fn flip_bit(path: &Path, bit: usize) {
    let mut bytes = fs::read(path).expect("read file to damage");
    assert!(!bytes.is_empty(), "cannot flip a bit of an empty file");
    let bit = bit % (bytes.len() * 8);
    bytes[bit / 8] ^= 1 << (bit % 8);
    fs::write(path, bytes).expect("write damaged file");
}

fn assert_corrupt(result: Result<Option<Bytes>, StorageError>, path: &Path) {
    match result {
        Err(StorageError::Corrupt {
            location, offset, ..
        }) => {
            assert_eq!(location, path.display().to_string());
            assert_eq!(offset, 0);
        }
        other => panic!("expected Corrupt for {}, got {other:?}", path.display()),
    }
}

fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// The same trait-level scenario, run against every [`StableStore`].
async fn exercise(store: &dyn StableStore) {
    assert_eq!(store.get(b"a").await.unwrap(), None);
    assert!(store.keys().await.unwrap().is_empty());
    store.put(b"b", b("two")).await.unwrap();
    store.put(b"a", b("one")).await.unwrap();
    store.put(b"a", b("uno")).await.unwrap();
    store.put(b"", b("empty key")).await.unwrap();
    store.put(b"\x00/\xff", Bytes::new()).await.unwrap();
    assert_eq!(store.get(b"a").await.unwrap(), Some(b("uno")));
    assert_eq!(store.get(b"b").await.unwrap(), Some(b("two")));
    assert_eq!(store.get(b"").await.unwrap(), Some(b("empty key")));
    assert_eq!(store.get(b"\x00/\xff").await.unwrap(), Some(Bytes::new()));
    assert_eq!(
        store.keys().await.unwrap(),
        vec![
            Bytes::new(),
            Bytes::from_static(b"\x00/\xff"),
            b("a"),
            b("b")
        ]
    );
    store.delete(b"a").await.unwrap();
    store.delete(b"a").await.unwrap();
    store.delete(b"never there").await.unwrap();
    assert_eq!(store.get(b"a").await.unwrap(), None);
    assert_eq!(store.keys().await.unwrap().len(), 3);
}

#[test]
fn every_store_passes_the_same_scenario() {
    let dir = TestDir::new("stores-scenario");
    let mem = MemStore::new();
    let file = FileStore::open(dir.path().join("file")).unwrap();
    let mirrored = MirroredStore::open(dir.path().join("main"), dir.path().join("mirror")).unwrap();
    block_on(async {
        exercise(&mem).await;
        exercise(&file).await;
        exercise(&mirrored).await;
    });
    assert_eq!(mirrored.repairs(), RepairCounts::default());
}

// ---------------------------------------------------------------- FileStore

#[test]
fn file_store_put_get_overwrite_delete_keys() {
    let dir = TestDir::new("fs-basic");
    let store = FileStore::open(dir.path()).unwrap();
    assert_eq!(store.get_sync(b"k").unwrap(), None);
    store.put_sync(b"k", b"v1").unwrap();
    assert_eq!(store.get_sync(b"k").unwrap(), Some(b("v1")));
    store.put_sync(b"k", b"v2").unwrap();
    assert_eq!(store.get_sync(b"k").unwrap(), Some(b("v2")));
    store.put_sync(b"j", b"w").unwrap();
    assert_eq!(store.keys_sync().unwrap(), vec![b("j"), b("k")]);
    // One file per key, named by the key's hex, and no temporaries left;
    // LOCK is the open store's lock.
    assert_eq!(sorted_names(dir.path()), vec!["6a.v", "6b.v", "LOCK"]);
    assert_eq!(store.path_of(b"k").unwrap(), dir.path().join("6b.v"));
    store.delete_sync(b"k").unwrap();
    assert_eq!(store.get_sync(b"k").unwrap(), None);
    assert_eq!(store.keys_sync().unwrap(), vec![b("j")]);
    store.delete_sync(b"k").unwrap();
}

#[test]
fn file_store_reopen_keeps_everything() {
    let dir = TestDir::new("fs-reopen");
    let mut expected = BTreeMap::new();
    {
        let store = FileStore::open(dir.path()).unwrap();
        for i in 0u8..20 {
            let key = vec![i, 0xff - i];
            let value = vec![i; usize::from(i) * 10];
            store.put_sync(&key, &value).unwrap();
            expected.insert(Bytes::from(key), Bytes::from(value));
        }
        store.delete_sync(&[3, 0xfc]).unwrap();
        expected.remove(&[3u8, 0xfc][..]);
    }
    let store = FileStore::open(dir.path()).unwrap();
    assert_eq!(
        store.keys_sync().unwrap(),
        expected.keys().cloned().collect::<Vec<_>>()
    );
    for (k, v) in &expected {
        assert_eq!(store.get_sync(k).unwrap().as_ref(), Some(v));
    }
}

#[test]
fn file_store_open_creates_nested_directories() {
    let dir = TestDir::new("fs-nested");
    let path = dir.path().join("a").join("b");
    let store = FileStore::open(&path).unwrap();
    store.put_sync(b"k", b"v").unwrap();
    assert!(path.is_dir());
    assert_eq!(store.dir(), path);
}

#[test]
fn interrupted_put_leaves_old_value_and_its_temporary_is_removed_on_open() {
    let dir = TestDir::new("fs-tmp");
    let (k_path, fresh_path) = {
        let store = FileStore::open(dir.path()).unwrap();
        store.put_sync(b"k", b"old").unwrap();
        (
            store.path_of(b"k").unwrap(),
            store.path_of(b"fresh").unwrap(),
        )
    };
    // A crash after writing (part of) the temporary but before the rename:
    // for an existing key, and for a key whose first put never finished.
    let new_copy = copy::encode(b"k", b"new value", 0);
    let tmp = temporary_of(&k_path);
    fs::write(&tmp, &new_copy[..new_copy.len() / 2]).unwrap();
    let fresh_tmp = temporary_of(&fresh_path);
    fs::write(&fresh_tmp, copy::encode(b"fresh", b"v", 0)).unwrap();

    let store = FileStore::open(dir.path()).unwrap();
    assert!(!tmp.exists(), "temporary of the interrupted put removed");
    assert!(!fresh_tmp.exists());
    assert_eq!(store.get_sync(b"k").unwrap(), Some(b("old")));
    assert_eq!(store.get_sync(b"fresh").unwrap(), None);
    assert_eq!(store.keys_sync().unwrap(), vec![b("k")]);
}

#[test]
fn temporaries_are_not_keys_even_before_open_removes_them() {
    let dir = TestDir::new("fs-tmp-keys");
    let store = FileStore::open(dir.path()).unwrap();
    store.put_sync(b"k", b"v").unwrap();
    fs::write(dir.path().join("6a.v.tmp"), b"partial").unwrap();
    assert_eq!(store.keys_sync().unwrap(), vec![b("k")]);
}

#[test]
fn every_bit_flip_in_a_stored_file_is_reported_as_corruption() {
    let dir = TestDir::new("fs-flip");
    let store = FileStore::open(dir.path()).unwrap();
    store.put_sync(b"key", b"a value").unwrap();
    let path = store.path_of(b"key").unwrap();
    let bits = fs::read(&path).unwrap().len() * 8;
    for bit in 0..bits {
        flip_bit(&path, bit);
        // Never the wrong value: every damaged copy is an error.
        assert_corrupt(store.get_sync(b"key"), &path);
        flip_bit(&path, bit);
        assert_eq!(store.get_sync(b"key").unwrap(), Some(b("a value")));
    }
}

#[test]
fn truncated_and_misplaced_files_are_corruption() {
    let dir = TestDir::new("fs-misplaced");
    let store = FileStore::open(dir.path()).unwrap();
    store.put_sync(b"a", b"value of a").unwrap();
    store.put_sync(b"b", b"value of b").unwrap();
    let a = store.path_of(b"a").unwrap();
    let b_path = store.path_of(b"b").unwrap();
    // A's intact copy under b's name must not be read as b's value.
    fs::copy(&a, &b_path).unwrap();
    match store.get_sync(b"b") {
        Err(StorageError::Corrupt { reason, .. }) => assert!(reason.contains("another key")),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let bytes = fs::read(&a).unwrap();
    fs::write(&a, &bytes[..bytes.len() - 1]).unwrap();
    assert_corrupt(store.get_sync(b"a"), &a);
    fs::write(&a, b"").unwrap();
    assert_corrupt(store.get_sync(b"a"), &a);
    // A corrupt file is still a key; overwriting it heals it.
    assert_eq!(store.keys_sync().unwrap(), vec![b("a"), b("b")]);
    store.put_sync(b"a", b"fixed").unwrap();
    assert_eq!(store.get_sync(b"a").unwrap(), Some(b("fixed")));
}

#[test]
fn oversize_key_is_rejected() {
    let dir = TestDir::new("fs-oversize");
    let store = FileStore::open(dir.path()).unwrap();
    let long = vec![7u8; MAX_KEY_LEN + 1];
    assert!(matches!(
        store.put_sync(&long, b"v"),
        Err(StorageError::Rejected(_))
    ));
    assert!(matches!(
        store.get_sync(&long),
        Err(StorageError::Rejected(_))
    ));
    assert!(matches!(
        store.delete_sync(&long),
        Err(StorageError::Rejected(_))
    ));
    assert!(matches!(
        block_on(store.put(&long, b("v"))),
        Err(StorageError::Rejected(_))
    ));
    assert!(store.keys_sync().unwrap().is_empty());
    let longest = vec![7u8; MAX_KEY_LEN];
    store.put_sync(&longest, b"v").unwrap();
    assert_eq!(store.keys_sync().unwrap(), vec![Bytes::from(longest)]);

    let mirrored = MirroredStore::open(dir.path().join("m"), dir.path().join("r")).unwrap();
    assert!(matches!(
        mirrored.put_sync(&long, b"v"),
        Err(StorageError::Rejected(_))
    ));
}

#[test]
fn foreign_files_are_ignored_and_kept() {
    let dir = TestDir::new("fs-foreign");
    for name in ["README", "ABCD.v", "abc.v", "zz.v", "6b.value"] {
        fs::write(dir.path().join(name), b"not ours").unwrap();
    }
    fs::create_dir(dir.path().join("6a.v")).unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    store.put_sync(b"k", b"v").unwrap();
    assert_eq!(store.keys_sync().unwrap(), vec![b("k")]);
    assert_eq!(
        sorted_names(dir.path()).len(),
        8,
        "open removed only temporaries (and added LOCK)"
    );
}

// ------------------------------------------------------------ MirroredStore

fn mirrored(dir: &TestDir) -> MirroredStore {
    MirroredStore::open(dir.path().join("main"), dir.path().join("mirror")).unwrap()
}

/// Asserts that `key`'s two copies exist and are byte-identical.
fn assert_identical(store: &MirroredStore, key: &[u8]) {
    let main = fs::read(store.main_path(key).unwrap()).expect("main copy");
    let mirror = fs::read(store.mirror_path(key).unwrap()).expect("mirror copy");
    assert_eq!(main, mirror, "main and mirror copies differ");
}

#[test]
fn identical_copies_are_read_without_repair() {
    let dir = TestDir::new("mir-identical");
    let store = mirrored(&dir);
    store.put_sync(b"k", b"v").unwrap();
    assert_identical(&store, b"k");
    assert_eq!(store.get_sync(b"k").unwrap(), Some(b("v")));
    assert_eq!(store.repairs(), RepairCounts::default());
    assert_eq!(
        store.recover().unwrap(),
        ScrubReport {
            ok: 1,
            ..ScrubReport::default()
        }
    );
}

#[test]
fn corrupt_main_copy_is_repaired_from_the_mirror() {
    let dir = TestDir::new("mir-bad-main");
    let store = mirrored(&dir);
    store.put_sync(b"k", b"value").unwrap();
    flip_bit(&store.main_path(b"k").unwrap(), 77);
    assert_eq!(store.get_sync(b"k").unwrap(), Some(b("value")));
    assert_identical(&store, b"k");
    assert_eq!(
        store.repairs(),
        RepairCounts {
            repaired_from_mirror: 1,
            ..RepairCounts::default()
        }
    );
    // Repaired for good: the next read needs no repair.
    assert_eq!(store.get_sync(b"k").unwrap(), Some(b("value")));
    assert_eq!(store.repairs().repaired_from_mirror, 1);
}

#[test]
fn corrupt_mirror_copy_is_repaired_from_main() {
    let dir = TestDir::new("mir-bad-mirror");
    let store = mirrored(&dir);
    store.put_sync(b"k", b"value").unwrap();
    flip_bit(&store.mirror_path(b"k").unwrap(), 3);
    assert_eq!(store.get_sync(b"k").unwrap(), Some(b("value")));
    assert_identical(&store, b"k");
    assert_eq!(
        store.repairs(),
        RepairCounts {
            repaired_from_main: 1,
            ..RepairCounts::default()
        }
    );
}

#[test]
fn missing_copies_are_repaired_from_the_other_disk() {
    let dir = TestDir::new("mir-missing");
    let store = mirrored(&dir);
    store.put_sync(b"m", b"main lost").unwrap();
    store.put_sync(b"r", b"mirror lost").unwrap();
    fs::remove_file(store.main_path(b"m").unwrap()).unwrap();
    fs::remove_file(store.mirror_path(b"r").unwrap()).unwrap();
    assert_eq!(store.keys_sync().unwrap(), vec![b("m"), b("r")]);
    assert_eq!(store.get_sync(b"m").unwrap(), Some(b("main lost")));
    assert_eq!(store.get_sync(b"r").unwrap(), Some(b("mirror lost")));
    assert_identical(&store, b"m");
    assert_identical(&store, b"r");
    assert_eq!(
        store.repairs(),
        RepairCounts {
            repaired_from_main: 1,
            repaired_from_mirror: 1,
            ..RepairCounts::default()
        }
    );
}

#[test]
fn good_but_different_copies_of_one_generation_resolve_to_main_and_the_mirror_is_repaired() {
    let dir = TestDir::new("mir-differ");
    let store = mirrored(&dir);
    store.put_sync(b"k", b"main value").unwrap();
    // Give the mirror a different but perfectly valid copy of the same
    // generation (1, the first put's): the subject's rule is that main wins.
    fs::write(
        store.mirror_path(b"k").unwrap(),
        copy::encode(b"k", b"mirror value", 1),
    )
    .unwrap();
    assert_eq!(store.get_sync(b"k").unwrap(), Some(b("main value")));
    assert_identical(&store, b"k");
    assert_eq!(
        store.repairs(),
        RepairCounts {
            main_won_disagreement: 1,
            ..RepairCounts::default()
        }
    );
}

#[test]
fn no_good_copy_is_a_typed_error_naming_both_copies() {
    let dir = TestDir::new("mir-both-bad");
    let store = mirrored(&dir);
    store.put_sync(b"k", b"value").unwrap();
    let (main, mirror) = (
        store.main_path(b"k").unwrap(),
        store.mirror_path(b"k").unwrap(),
    );
    flip_bit(&main, 40);
    flip_bit(&mirror, 41);
    let damaged = (fs::read(&main).unwrap(), fs::read(&mirror).unwrap());
    match store.get_sync(b"k") {
        Err(StorageError::Corrupt {
            location, reason, ..
        }) => {
            assert!(location.contains(&main.display().to_string()));
            assert!(location.contains(&mirror.display().to_string()));
            assert!(reason.starts_with("both copies bad"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(block_on(store.get(b"k")).is_err());
    // Nothing was "repaired" with a guess: both files are as damaged as before.
    assert_eq!(
        (fs::read(&main).unwrap(), fs::read(&mirror).unwrap()),
        damaged
    );
    assert_eq!(store.repairs(), RepairCounts::default());

    // One bad copy and the other missing is no better.
    fs::remove_file(&mirror).unwrap();
    assert!(matches!(
        store.get_sync(b"k"),
        Err(StorageError::Corrupt { .. })
    ));
    // Writing the key again replaces both copies.
    store.put_sync(b"k", b"rewritten").unwrap();
    assert_eq!(store.get_sync(b"k").unwrap(), Some(b("rewritten")));
    assert_identical(&store, b"k");
}

#[test]
fn crash_between_main_and_mirror_recovers_to_the_new_value() {
    let dir = TestDir::new("mir-crash-put");
    {
        let store = mirrored(&dir);
        store.put_sync(b"k", b"old").unwrap();
        // The put of "new" crashes after the main copy, before the mirror.
        store.put_main_only(b"k", b"new").unwrap();
        // The first put of another key crashes at the same point.
        store.put_main_only(b"first", b"only on main").unwrap();
    }
    let store = mirrored(&dir);
    let report = store.recover().unwrap();
    assert_eq!(
        report,
        ScrubReport {
            repaired_from_main: 2,
            stale_replaced: 1,
            ..ScrubReport::default()
        }
    );
    assert_eq!(store.get_sync(b"k").unwrap(), Some(b("new")));
    assert_eq!(store.get_sync(b"first").unwrap(), Some(b("only on main")));
    assert_identical(&store, b"k");
    assert_identical(&store, b"first");
    assert_eq!(
        store.recover().unwrap(),
        ScrubReport {
            ok: 2,
            ..ScrubReport::default()
        }
    );
}

#[test]
fn crash_inside_the_main_write_recovers_to_the_old_value() {
    let dir = TestDir::new("mir-crash-main");
    let main_path = {
        let store = mirrored(&dir);
        store.put_sync(b"k", b"old").unwrap();
        store.main_path(b"k").unwrap()
    };
    // The main write's temporary was half written when the crash came.
    let new_copy = copy::encode(b"k", b"new", 2);
    let tmp = temporary_of(&main_path);
    fs::write(&tmp, &new_copy[..7]).unwrap();
    let store = mirrored(&dir);
    assert!(!tmp.exists());
    assert_eq!(
        store.recover().unwrap(),
        ScrubReport {
            ok: 1,
            ..ScrubReport::default()
        }
    );
    assert_eq!(store.get_sync(b"k").unwrap(), Some(b("old")));
}

#[test]
fn crash_between_the_two_removals_of_a_delete_keeps_the_old_value() {
    let dir = TestDir::new("mir-crash-delete");
    {
        let store = mirrored(&dir);
        store.put_sync(b"k", b"old").unwrap();
        store.delete_mirror_only(b"k").unwrap();
    }
    let store = mirrored(&dir);
    assert_eq!(
        store.recover().unwrap(),
        ScrubReport {
            repaired_from_main: 1,
            ..ScrubReport::default()
        }
    );
    assert_eq!(store.get_sync(b"k").unwrap(), Some(b("old")));
    assert_identical(&store, b"k");
    store.delete_sync(b"k").unwrap();
    assert!(!store.main_path(b"k").unwrap().exists());
    assert!(!store.mirror_path(b"k").unwrap().exists());
    assert_eq!(store.get_sync(b"k").unwrap(), None);
}

/// `path` with `.tmp` appended: where [`ft_storage::fsutil::write_atomic`]
/// writes before its rename.
fn temporary_of(path: &Path) -> std::path::PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    tmp.into()
}

#[test]
fn a_put_that_fails_on_the_mirror_has_already_written_main() {
    let dir = TestDir::new("mir-order-put");
    let store = mirrored(&dir);
    store.put_sync(b"k", b"old").unwrap();
    // A directory where the mirror's temporary goes makes the mirror write
    // fail (even for root, unlike permissions).
    let blocker = temporary_of(&store.mirror_path(b"k").unwrap());
    fs::create_dir(&blocker).unwrap();
    assert!(matches!(
        store.put_sync(b"k", b"new"),
        Err(StorageError::Io(_))
    ));
    fs::remove_dir(&blocker).unwrap();
    // Main was written first, so the failed put resolves to the new value:
    // its copy is the newer generation, and the mirror's is replaced.
    assert_eq!(store.get_sync(b"k").unwrap(), Some(b("new")));
    assert_identical(&store, b"k");
    assert_eq!(
        store.repairs(),
        RepairCounts {
            repaired_from_main: 1,
            stale_replaced: 1,
            ..RepairCounts::default()
        }
    );
}

#[test]
fn a_delete_that_fails_on_the_mirror_has_not_touched_main() {
    let dir = TestDir::new("mir-order-delete");
    let store = mirrored(&dir);
    store.put_sync(b"k", b"old").unwrap();
    // Replace the mirror copy with a directory, which remove_file refuses.
    let mirror = store.mirror_path(b"k").unwrap();
    fs::remove_file(&mirror).unwrap();
    fs::create_dir(&mirror).unwrap();
    assert!(matches!(store.delete_sync(b"k"), Err(StorageError::Io(_))));
    assert_eq!(
        copy::decode(&fs::read(store.main_path(b"k").unwrap()).unwrap(), b"k")
            .unwrap()
            .value,
        b("old"),
        "the mirror goes first, so main still holds the complete old value"
    );
    fs::remove_dir(&mirror).unwrap();
    assert_eq!(store.get_sync(b"k").unwrap(), Some(b("old")));
    assert_identical(&store, b"k");
}

#[test]
fn scrub_counts_each_case_and_leaves_identical_copies() {
    let dir = TestDir::new("mir-scrub");
    let store = mirrored(&dir);
    for k in [
        "ok1",
        "ok2",
        "bad-main",
        "bad-mirror",
        "gone-main",
        "gone-mirror",
        "differ",
        "same-generation",
        "lost",
    ] {
        store
            .put_sync(k.as_bytes(), format!("value of {k}").as_bytes())
            .unwrap();
    }
    fs::write(
        store.mirror_path(b"same-generation").unwrap(),
        copy::encode(b"same-generation", b"mirror's", 1),
    )
    .unwrap();
    flip_bit(&store.main_path(b"bad-main").unwrap(), 100);
    flip_bit(&store.mirror_path(b"bad-mirror").unwrap(), 100);
    fs::remove_file(store.main_path(b"gone-main").unwrap()).unwrap();
    fs::remove_file(store.mirror_path(b"gone-mirror").unwrap()).unwrap();
    store.put_main_only(b"differ", b"newer").unwrap();
    flip_bit(&store.main_path(b"lost").unwrap(), 9);
    flip_bit(&store.mirror_path(b"lost").unwrap(), 90);

    let report = store.scrub().unwrap();
    assert_eq!(
        report,
        ScrubReport {
            ok: 2,
            repaired_from_main: 3,
            repaired_from_mirror: 2,
            stale_replaced: 1,
            main_won_disagreement: 1,
            both_bad: vec![b("lost")],
            ..ScrubReport::default()
        }
    );
    assert_eq!(report.repaired(), 6);
    assert_eq!(
        store.repairs(),
        RepairCounts {
            repaired_from_main: 3,
            repaired_from_mirror: 2,
            stale_replaced: 1,
            main_won_disagreement: 1,
            ..RepairCounts::default()
        }
    );
    for k in [
        "ok1",
        "ok2",
        "bad-main",
        "bad-mirror",
        "gone-main",
        "gone-mirror",
    ] {
        assert_identical(&store, k.as_bytes());
        assert_eq!(
            store.get_sync(k.as_bytes()).unwrap(),
            Some(b(&format!("value of {k}")))
        );
    }
    assert_identical(&store, b"differ");
    assert_eq!(store.get_sync(b"differ").unwrap(), Some(b("newer")));
    assert_identical(&store, b"same-generation");
    assert_eq!(
        store.get_sync(b"same-generation").unwrap(),
        Some(b("value of same-generation"))
    );
    assert!(store.get_sync(b"lost").is_err());

    // A second scrub finds everything in order except the lost key, which
    // stays reported rather than silently dropped.
    assert_eq!(
        store.scrub().unwrap(),
        ScrubReport {
            ok: 8,
            both_bad: vec![b("lost")],
            ..ScrubReport::default()
        }
    );
}

#[test]
fn reopen_keeps_everything_on_both_disks() {
    let dir = TestDir::new("mir-reopen");
    {
        let store = mirrored(&dir);
        block_on(async {
            store.put(b"a", b("1")).await.unwrap();
            store.put(b"b", b("2")).await.unwrap();
            store.delete(b"a").await.unwrap();
        });
    }
    let store = mirrored(&dir);
    assert_eq!(block_on(store.keys()).unwrap(), vec![b("b")]);
    assert_eq!(block_on(store.get(b"b")).unwrap(), Some(b("2")));
    assert_identical(&store, b"b");
}

#[test]
fn main_and_mirror_must_be_different_directories() {
    let dir = TestDir::new("mir-same");
    assert!(matches!(
        MirroredStore::open(dir.path(), dir.path()),
        Err(StorageError::Rejected(_))
    ));
    assert!(matches!(
        MirroredStore::open(dir.path(), dir.path().join(".")),
        Err(StorageError::Rejected(_))
    ));
}

// ------------------------------------------------- random crashes & damage

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8),
    Delete(u8),
    /// A put that crashed between the main and the mirror copy.
    PutMainOnly(u8, u8),
    /// A delete that crashed between the mirror and the main copy.
    DeleteMirrorOnly(u8),
    /// One bit of one copy decays (after the key's copies were reconciled,
    /// so the other copy is good).
    Decay {
        main: bool,
        key: u8,
        bit: usize,
    },
    Recover,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..4;
    prop_oneof![
        3 => (key.clone(), any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        1 => key.clone().prop_map(Op::Delete),
        2 => (key.clone(), any::<u8>()).prop_map(|(k, v)| Op::PutMainOnly(k, v)),
        1 => key.clone().prop_map(Op::DeleteMirrorOnly),
        2 => (any::<bool>(), key, any::<usize>()).prop_map(|(main, key, bit)| Op::Decay { main, key, bit }),
        1 => Just(Op::Recover),
        1 => Just(Op::Reopen),
    ]
}

fn value_of(v: u8) -> Vec<u8> {
    vec![v; usize::from(v % 16) + 1]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever sequence of completed and crashed writes and single-copy
    /// decay, every read returns what the rules promise: the last put whose
    /// main copy was written, and after recovery both copies agree.
    #[test]
    fn reads_follow_the_rules_through_crashes_and_decay(ops in proptest::collection::vec(op(), 1..25)) {
        let dir = TestDir::new("mir-prop");
        let mut store = mirrored(&dir);
        let mut model: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    store.put_sync(&[k], &value_of(v)).unwrap();
                    model.insert(k, value_of(v));
                }
                Op::Delete(k) => {
                    store.delete_sync(&[k]).unwrap();
                    model.remove(&k);
                }
                Op::PutMainOnly(k, v) => {
                    store.put_main_only(&[k], &value_of(v)).unwrap();
                    model.insert(k, value_of(v));
                }
                Op::DeleteMirrorOnly(k) => store.delete_mirror_only(&[k]).unwrap(),
                Op::Decay { main, key, bit } => {
                    prop_assert_eq!(store.get_sync(&[key]).unwrap().map(|v| v.to_vec()), model.get(&key).cloned());
                    let path = if main { store.main_path(&[key]) } else { store.mirror_path(&[key]) }.unwrap();
                    if path.exists() {
                        flip_bit(&path, bit);
                    }
                }
                Op::Recover => {
                    let report = store.recover().unwrap();
                    prop_assert!(report.both_bad.is_empty());
                    for k in model.keys() {
                        assert_identical(&store, &[*k]);
                    }
                }
                Op::Reopen => {
                    drop(store);
                    store = mirrored(&dir);
                }
            }
            for k in 0u8..4 {
                prop_assert_eq!(store.get_sync(&[k]).unwrap().map(|v| v.to_vec()), model.get(&k).cloned());
            }
            let keys: Vec<Bytes> = model.keys().map(|k| Bytes::copy_from_slice(&[*k])).collect();
            prop_assert_eq!(store.keys_sync().unwrap(), keys);
        }
    }
}
