//! Signed checkpoints: where the writer puts them, what `verify` with keys
//! says about a file that is intact, replaced, re-chained by someone
//! without the key, or cut; and a seeded fuzz of the checkpoint reader.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clawgress_policies::signing::{KeyRing, SigningKey};
use sha2::{Digest, Sha256};

use super::fuzz::{CORRUPTIONS, corrupt, is_tail_cut};
use super::{denied_event, metrics, read_lines, temp_log, write_lines};
use crate::audit::{
    CheckpointConfig, FsyncPolicy, LineProblem, VerifyError, WriterOptions, start_writer_with, verify_file,
    verify_file_signed,
};
use crate::testing::Rng;

fn options(key: &Arc<SigningKey>, every: u64, interval: Duration) -> WriterOptions {
    WriterOptions {
        capacity: 64,
        fsync: FsyncPolicy::Interval,
        checkpoints: Some(CheckpointConfig {
            key: key.clone(),
            every_records: every,
            interval,
        }),
    }
}

async fn write_signed(path: &Path, key: &Arc<SigningKey>, every: u64, count: usize) {
    let (sink, handle) =
        start_writer_with(path, options(key, every, Duration::from_secs(3600)), metrics()).expect("start");
    for _ in 0..count {
        sink.reserve().expect("room").record(denied_event());
    }
    drop(sink);
    handle.shutdown().await.expect("shutdown");
}

fn ring(key: &SigningKey) -> KeyRing {
    KeyRing::new([key.verifying_key()])
}

fn kinds(path: &Path) -> Vec<String> {
    read_lines(path)
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            v["type"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

#[tokio::test]
async fn a_checkpoint_every_n_records_and_one_at_shutdown_sign_the_whole_file() {
    let (_dir, path) = temp_log();
    let key = Arc::new(SigningKey::generate().expect("key"));
    write_signed(&path, &key, 10, 25).await;
    let kinds = kinds(&path);
    let checkpoints: Vec<usize> = (0..kinds.len())
        .filter(|&i| kinds[i] == "checkpoint")
        .map(|i| i + 1)
        .collect();
    assert_eq!(
        checkpoints,
        [11, 22, 28],
        "after 10, after 20 more lines, and at shutdown"
    );
    let line: serde_json::Value = serde_json::from_str(&read_lines(&path)[10]).expect("json");
    assert_eq!(line["seq"], 10);
    assert_eq!(line["covers"], line["prev_hash"]);
    assert_eq!(line["key_id"], key.key_id());

    let (report, signed) = verify_file_signed(&path, &ring(&key)).expect("signed and intact");
    assert_eq!(
        (
            report.lines,
            signed.checkpoints,
            signed.signed_through,
            signed.unsigned_records
        ),
        (28, 3, 27, 0)
    );
    assert_eq!(signed.key_ids, [key.key_id().to_string()]);
    // Without a key it is an ordinary chain.
    assert_eq!(verify_file(&path).expect("chain").lines, 28);
}

#[tokio::test]
async fn a_checkpoint_comes_after_the_interval_without_new_records() {
    let (_dir, path) = temp_log();
    let key = Arc::new(SigningKey::generate().expect("key"));
    let (sink, handle) =
        start_writer_with(&path, options(&key, 1000, Duration::from_millis(50)), metrics()).expect("start");
    for _ in 0..3 {
        sink.reserve().expect("room").record(denied_event());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while kinds(&path).len() < 4 {
        assert!(std::time::Instant::now() < deadline, "no timed checkpoint");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(kinds(&path)[3], "checkpoint");
    drop(sink);
    handle.shutdown().await.expect("shutdown");
    assert_eq!(
        kinds(&path).len(),
        4,
        "nothing unsigned at shutdown: no second checkpoint"
    );
}

#[tokio::test]
async fn a_restart_continues_the_line_count_of_the_checkpoints() {
    let (_dir, path) = temp_log();
    let key = Arc::new(SigningKey::generate().expect("key"));
    write_signed(&path, &key, 1000, 5).await;
    write_signed(&path, &key, 1000, 5).await;
    let (report, signed) = verify_file_signed(&path, &ring(&key)).expect("valid");
    assert_eq!((report.lines, signed.checkpoints, signed.signed_through), (12, 2, 11));
}

#[tokio::test]
async fn a_replaced_or_rechained_file_fails_and_a_cut_one_shows_unsigned_records() {
    let (_dir, path) = temp_log();
    let key = Arc::new(SigningKey::generate().expect("key"));
    let other = SigningKey::generate().expect("other key");
    write_signed(&path, &key, 10, 25).await;
    let original = read_lines(&path);

    // The verifier does not trust the key that signed.
    match verify_file_signed(&path, &ring(&other)) {
        Err(VerifyError::BadLine {
            line: 11,
            problem: LineProblem::UnknownKey(id),
        }) => assert_eq!(id, key.key_id()),
        other => panic!("expected an unknown key on line 11, got {other:?}"),
    }

    // Someone without the key edits a record and recomputes the whole chain:
    // the chain verifies, the first checkpoint after the edit does not.
    let mut forged = original.clone();
    forged[2] = forged[2].replacen("agent-builder-001", "agent-builder-666", 1);
    let forged = rechain(&forged);
    write_lines(&path, &forged);
    verify_file(&path).expect("a recomputed chain is a valid chain");
    match verify_file_signed(&path, &ring(&key)) {
        Err(VerifyError::BadLine {
            line: 11,
            problem: LineProblem::BadSignature(_),
        }) => {}
        other => panic!("expected a bad signature on line 11, got {other:?}"),
    }

    // A replaced file with no checkpoint at all.
    write_lines(&path, &rechain(&original[..5]));
    assert!(matches!(
        verify_file_signed(&path, &ring(&key)),
        Err(VerifyError::NoCheckpoint { .. })
    ));

    // Cut before its last checkpoint: intact, and what follows the last
    // remaining checkpoint is reported unsigned.
    write_lines(&path, &original[..27]);
    let (_, signed) = verify_file_signed(&path, &ring(&key)).expect("a prefix is intact");
    assert_eq!(
        (signed.checkpoints, signed.signed_through, signed.unsigned_records),
        (2, 21, 5)
    );
}

/// What an attacker without the key can do: fix every hash and link (and a
/// checkpoint's `covers`), keeping the old signatures.
fn rechain(lines: &[String]) -> Vec<String> {
    let mut prev = "0".repeat(64);
    lines
        .iter()
        .map(|line| {
            let mut value: serde_json::Value = serde_json::from_str(line).expect("json");
            let object = value.as_object_mut().expect("object");
            object.remove("hash");
            object.remove("prev_hash");
            if object.get("type").and_then(|t| t.as_str()) == Some("checkpoint") {
                object.insert("covers".into(), prev.clone().into());
            }
            let body = serde_json::to_string(&value).expect("json");
            let body = format!("{},\"prev_hash\":\"{prev}\"", &body[..body.len() - 1]);
            let hash = hex::encode(Sha256::digest(body.as_bytes()));
            prev = hash.clone();
            format!("{body},\"hash\":\"{hash}\"}}")
        })
        .collect()
}

/// The checkpoint reader on damaged input: never a panic; any change is a
/// refusal or a reported torn tail, except whole lines cut off the end,
/// which a file cannot show by itself (the checkpoints in `audit.admin` can).
#[tokio::test]
async fn damaged_signed_files_are_refused_or_reported_never_accepted_silently() {
    let (_dir, path) = temp_log();
    let key = Arc::new(SigningKey::generate().expect("key"));
    write_signed(&path, &key, 3, 7).await;
    let original = std::fs::read(&path).expect("read");
    let keys = ring(&key);
    let scratch = path.with_extension("damaged");
    let mut rng = Rng::new(0x7369_676e);
    let (mut refused, mut reported) = (0, 0);
    for case in 0..600 {
        let mut damaged = original.clone();
        if rng.one_in(3) {
            rng.mutate(&mut damaged, b"{}\":,0123456789abcdef", 3);
        } else {
            let corruption = *rng.pick(&CORRUPTIONS);
            corrupt(&mut rng, &mut damaged, corruption);
        }
        std::fs::write(&scratch, &damaged).expect("write");
        let verdict = verify_file_signed(&scratch, &keys);
        let context = || format!("case {case}: {verdict:?}\n{}", String::from_utf8_lossy(&damaged));
        if damaged == original || is_tail_cut(&original, &damaged) {
            assert!(
                verdict.is_ok() || matches!(verdict, Err(VerifyError::NoCheckpoint { .. })),
                "{}",
                context()
            );
            continue;
        }
        match &verdict {
            Err(VerifyError::BadLine { .. } | VerifyError::NoCheckpoint { .. }) => refused += 1,
            Ok((report, _)) if report.torn_tail.is_some() => reported += 1,
            _ => panic!("damage accepted: {}", context()),
        }
    }
    assert!(refused > 300 && reported > 0, "refused {refused}, reported {reported}");
}
