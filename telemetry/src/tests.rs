use super::*;

#[test]
fn well_formed_traceparents_are_read() {
    let context = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    assert_eq!(context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
    assert!(context.is_sampled());
    assert!(context.is_remote());
    // A later version may carry more fields.
    assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra").is_some());
}

#[test]
fn malformed_traceparents_are_ignored() {
    for bad in [
        "",
        "garbage",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
    ] {
        assert!(parse(bad).is_none(), "{bad}");
    }
}

#[test]
fn untraced_spans_have_no_traceparent() {
    // No exporter in this process: nothing to propagate.
    let span = tracing::debug_span!(target: "clawgress::test", "job");
    adopt(&span, Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    assert_eq!(traceparent(&span), None);
    assert_eq!(trace_id(&span), None);
}

/// A small deterministic generator, so a failure reproduces.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn mutated_traceparents_never_panic_and_what_parses_round_trips() {
    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let alphabet = b"0123456789abcdefABCDEF-xz \t\0\xff";
    let mut state = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..100_000 {
        let mut bytes = valid.as_bytes().to_vec();
        for _ in 0..(xorshift(&mut state) % 4 + 1) {
            let at = (xorshift(&mut state) as usize) % (bytes.len() + 1);
            let pick = alphabet[(xorshift(&mut state) as usize) % alphabet.len()];
            match xorshift(&mut state) % 3 {
                0 if at < bytes.len() => bytes[at] = pick,
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, pick),
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Some(context) = parse(&text) {
            let again = format!(
                "00-{}-{}-{:02x}",
                context.trace_id(),
                context.span_id(),
                context.trace_flags().to_u8()
            );
            let reparsed = parse(&again).expect("what parsed once parses again");
            assert_eq!(reparsed.trace_id(), context.trace_id(), "{text:?}");
            assert!(text.trim().contains(&context.trace_id().to_string()), "{text:?}");
        }
    }
}

#[test]
fn endpoints_are_logged_without_credentials() {
    assert_eq!(
        without_userinfo("https://user:s3cret@otel.example:4318/v1"),
        "https://otel.example:4318/v1"
    );
    assert_eq!(without_userinfo("http://127.0.0.1:4318"), "http://127.0.0.1:4318");
    assert_eq!(without_userinfo("otel:4318"), "otel:4318");
    assert!(!without_userinfo("http://a:b@c@d/x").contains('b'));
}
