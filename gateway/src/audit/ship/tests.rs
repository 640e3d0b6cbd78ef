use std::io::Write as _;

use super::cursor::{Cursor, Position};
use super::*;

fn trail_with(lines: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let mut file = File::create(&path).expect("create");
    for line in lines {
        writeln!(file, "{line}").expect("write");
    }
    (dir, path)
}

#[test]
fn chunks_end_on_a_line_and_never_pass_the_written_end() {
    let (_dir, path) = trail_with(&["aaaa", "bbbb", "cc"]);
    let file = File::open(&path).expect("open");
    assert_eq!(&read_lines(&file, 0, 13).expect("read")[..], b"aaaa\nbbbb\ncc\n");
    // The writer said 7: only the first whole line is ours to ship.
    assert_eq!(&read_lines(&file, 0, 7).expect("read")[..], b"aaaa\n");
    assert_eq!(&read_lines(&file, 5, 13).expect("read")[..], b"bbbb\ncc\n");
    assert!(
        read_lines(&file, 0, 3).is_err(),
        "a range without a line end is not the writer's"
    );
}

#[tokio::test]
async fn the_cursor_resumes_only_where_it_matches_the_trail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let metrics = AuditMetrics::detached().expect("metrics");
    let (sink, handle) = crate::audit::start_writer(&path, 8, metrics).expect("writer");
    for _ in 0..3 {
        sink.reserve()
            .expect("slot")
            .record(crate::audit::AdminEvent::new("tester", "maintainer", "test"));
    }
    drop(sink);
    handle.shutdown().await.expect("shutdown");
    let text = std::fs::read_to_string(&path).expect("read");
    let first_end = text.find('\n').expect("a line") as u64 + 1;
    let first: serde_json::Value = serde_json::from_str(text.lines().next().expect("line")).expect("json");
    let hash = first["hash"].as_str().expect("hash").to_string();

    let (cursor, position) = Cursor::open(&path).expect("open");
    assert_eq!(position, Position::start(), "no cursor yet: from the start");
    let resume = Position {
        offset: first_end,
        hash: hash.clone(),
    };
    cursor.save(&resume).expect("save");
    drop(cursor);
    assert_eq!(Cursor::open(&path).expect("open").1, resume);

    // A cursor whose hash is not the line there (a replaced trail) is not trusted.
    let (cursor, _) = Cursor::open(&path).expect("open");
    cursor
        .save(&Position {
            offset: first_end,
            hash: "0".repeat(64),
        })
        .expect("save");
    drop(cursor);
    assert_eq!(Cursor::open(&path).expect("open").1, Position::start());
}

#[test]
fn the_backlog_age_comes_from_the_oldest_line() {
    let (_dir, path) = trail_with(&[r#"{"timestamp":"2020-01-01T00:00:00.000Z","type":"x"}"#]);
    let file = File::open(&path).expect("open");
    assert!(oldest_age_seconds(&file, 0).expect("age") > 86_400);
    assert_eq!(oldest_age_seconds(&file, 3), None);
}
