//! Confirmations: a record's waiter is released once the record is in the
//! file, under every fsync policy, and a stuck or stopped writer is told
//! apart from a written record.

use std::time::Duration;

use super::{denied_event, metrics, read_lines, temp_log};
use crate::audit::{AuditSlot, Confirmation, FsyncPolicy, Unconfirmed, WriterOptions, start_writer_with, verify_file};

async fn confirmed_records_are_in_the_file(fsync: FsyncPolicy) {
    let (_dir, path) = temp_log();
    let options = WriterOptions {
        capacity: 256,
        fsync,
        checkpoints: None,
    };
    let (sink, handle) = start_writer_with(&path, options, metrics()).expect("start");
    // Many at once: they share group commits, and each waiter still learns
    // its own record is there.
    let mut waiting = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..200 {
        let event = denied_event();
        ids.push(event.request_id.to_string());
        waiting.push(sink.reserve().expect("slot").record_confirmed(event));
    }
    for confirmation in waiting {
        confirmation.within(Duration::from_secs(10)).await.expect("confirmed");
    }
    // Read while the writer still runs: confirmed means on file now.
    let text = std::fs::read_to_string(&path).expect("read");
    for id in &ids {
        assert!(
            text.contains(id.as_str()),
            "{fsync:?}: record {id} confirmed but not in the file"
        );
    }
    drop(sink);
    handle.shutdown().await.expect("shutdown");
    assert_eq!(verify_file(&path).expect("valid").lines, 200);
}

#[tokio::test]
async fn a_confirmation_means_the_record_is_written_under_every_fsync_policy() {
    for fsync in [FsyncPolicy::Every, FsyncPolicy::Interval, FsyncPolicy::Never] {
        confirmed_records_are_in_the_file(fsync).await;
    }
}

#[tokio::test]
async fn a_writer_that_never_answers_times_out_and_one_that_stopped_fails() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let waited = Confirmation::waiting(rx).within(Duration::from_millis(20)).await;
    assert_eq!(waited, Err(Unconfirmed::TimedOut));
    drop(tx);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    drop(tx);
    assert_eq!(Confirmation::waiting(rx).await, Err(Unconfirmed::WriterFailed));
    assert_eq!(Confirmation::done().await, Ok(()));
}

#[tokio::test]
async fn a_fail_open_record_goes_to_the_log_and_is_confirmed_at_once() {
    let (_dir, path) = temp_log();
    let (sink, handle) = crate::audit::start_writer(&path, 4, metrics()).expect("start");
    let slot = AuditSlot::fail_open(&sink);
    assert_eq!(slot.record_confirmed(denied_event()).await, Ok(()));
    drop(sink);
    handle.shutdown().await.expect("shutdown");
    assert!(read_lines(&path).is_empty(), "the trail had no room: the log has it");
}

#[test]
fn fsync_modes_parse_and_name_the_choices_when_wrong() {
    assert_eq!("every".parse::<FsyncPolicy>(), Ok(FsyncPolicy::Every));
    assert_eq!("interval".parse::<FsyncPolicy>(), Ok(FsyncPolicy::Interval));
    assert_eq!("never".parse::<FsyncPolicy>(), Ok(FsyncPolicy::Never));
    let error = "always".parse::<FsyncPolicy>().expect_err("unknown");
    assert!(error.contains("every, interval or never"), "{error}");
}
