//! A write-ahead log that outlives its process: each run appends its arguments
//! as records, durable when `append_blocking` returns, then reads the whole log
//! back, so a second run shows the first run's records.
//!
//! ```text
//! cargo run -p ft-storage --example file_log -- /tmp/wal "vote-commit T1"
//! cargo run -p ft-storage --example file_log -- /tmp/wal "global-commit T1"
//! ```
use bytes::Bytes;
use ft_core::{Lsn, StorageError};
use ft_storage::{FileLog, FileLogOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: file_log <directory> [record...]")?;
    let log = FileLog::open(&dir, FileLogOptions::default())?;
    // Recovery verified every record's checksums and erased a torn tail, if a
    // crash left one; the report says what it found.
    let found = log.recovery();
    println!(
        "opened {dir}: records {}..{}",
        found.start.0, found.next_lsn.0
    );
    if let Some(torn) = &found.torn_tail {
        println!("a crash tore the last append; erased: {torn:?}");
    }

    // One append of many records shares one fdatasync (and with concurrent
    // appenders, so would theirs).
    let records: Vec<Bytes> = args.map(Bytes::from).collect();
    if !records.is_empty() {
        let first = log.append_blocking(&records)?;
        println!("appended {} record(s) from LSN {}", records.len(), first.0);
    }

    // The directory is locked while the log is open: a second handle, in this
    // process or another, is refused before it reads or writes anything.
    match FileLog::open(&dir, FileLogOptions::default()) {
        Err(StorageError::Locked { .. }) => println!("a second open is refused"),
        other => return Err(format!("a second open was not refused: {other:?}").into()),
    }

    for record in log.iter_from(Lsn(0))? {
        let (lsn, bytes) = record?;
        println!("{:>4}  {}", lsn.0, String::from_utf8_lossy(&bytes));
    }
    Ok(())
}
