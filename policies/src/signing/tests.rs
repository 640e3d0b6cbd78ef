use super::*;

const BUNDLE: &[u8] = b"egress:\n  default_action: deny\n";

fn ring(key: &SigningKey) -> KeyRing {
    KeyRing::new([key.verifying_key()])
}

#[test]
fn a_signed_bundle_verifies_and_keeps_its_lines() {
    let key = SigningKey::generate().expect("key");
    let signed = sign_bundle(BUNDLE, &key);
    assert!(signed.starts_with(BUNDLE), "the content is untouched");
    let verified = verify_bundle(&signed, &ring(&key)).expect("verifies");
    assert_eq!(verified.key_id, key.key_id());
    assert_eq!(verified.line, 3);
    // Signing again replaces the line rather than adding one.
    let again = sign_bundle(&signed, &key);
    assert_eq!(again.iter().filter(|&&b| b == b'\n').count(), 3);
    verify_bundle(&again, &ring(&key)).expect("re-signed verifies");
}

#[test]
fn any_edit_breaks_the_signature() {
    let key = SigningKey::generate().expect("key");
    let signed = sign_bundle(BUNDLE, &key);
    let mut edited = signed.clone();
    edited[20] ^= 1;
    assert!(matches!(
        verify_bundle(&edited, &ring(&key)),
        Err(SignatureProblem::BadSignature { line: 3, .. })
    ));
    // A comment added above the signature is an edit too.
    let mut commented = b"# note\n".to_vec();
    commented.extend_from_slice(&signed);
    assert!(matches!(
        verify_bundle(&commented, &ring(&key)),
        Err(SignatureProblem::BadSignature { line: 4, .. })
    ));
}

#[test]
fn unsigned_unknown_and_malformed_are_named_with_their_line() {
    let key = SigningKey::generate().expect("key");
    let other = SigningKey::generate().expect("key");
    assert!(matches!(
        verify_bundle(BUNDLE, &ring(&key)),
        Err(SignatureProblem::Missing { line: 3 })
    ));
    let by_other = sign_bundle(BUNDLE, &other);
    match verify_bundle(&by_other, &ring(&key)) {
        Err(SignatureProblem::UnknownKey { line, key_id, trusted }) => {
            assert_eq!(
                (line, key_id.as_str(), trusted.as_str()),
                (3, other.key_id(), key.key_id())
            );
        }
        other => panic!("expected an unknown key, got {other:?}"),
    }
    for junk in [
        "# clawgress-signature: rsa abc def\n",
        "# clawgress-signature: ed25519 abc\n",
        "# clawgress-signature: ed25519 abc !!!\n",
        "# clawgress-signature: ed25519 abc AAAA\n",
    ] {
        let mut bytes = BUNDLE.to_vec();
        bytes.extend_from_slice(junk.as_bytes());
        assert!(
            matches!(
                verify_bundle(&bytes, &ring(&key)),
                Err(SignatureProblem::Malformed { line: 3, .. })
            ),
            "{junk}"
        );
    }
}

#[test]
fn a_checkpoint_signature_is_not_a_bundle_signature() {
    // Domain separation: the same key signing the same bytes for another
    // purpose does not produce a valid bundle signature.
    let key = SigningKey::generate().expect("key");
    let forged = key.sign(BUNDLE);
    let mut bytes = BUNDLE.to_vec();
    bytes.extend_from_slice(
        format!(
            "# clawgress-signature: ed25519 {} {}\n",
            key.key_id(),
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, forged)
        )
        .as_bytes(),
    );
    assert!(matches!(
        verify_bundle(&bytes, &ring(&key)),
        Err(SignatureProblem::BadSignature { .. })
    ));
}

#[test]
fn key_files_round_trip_and_an_open_private_key_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (private, public, id) = init_key_pair(dir.path(), "policy", false).expect("init");
    let signing = SigningKey::load(&private).expect("load private");
    let verifying = VerifyingKey::load(&public).expect("load public");
    assert_eq!((signing.key_id(), verifying.key_id()), (id.as_str(), id.as_str()));
    assert!(verifying.verify(b"m", &signing.sign(b"m")));
    assert!(!format!("{signing:?}").contains("BEGIN"), "Debug never shows the key");
    assert!(matches!(
        init_key_pair(dir.path(), "policy", false),
        Err(KeyError::Exists { .. })
    ));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&private).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let error = SigningKey::load(&private).expect_err("group-readable key refused");
        assert!(error.to_string().contains("chmod 600"), "{error}");
    }
    // Each half where the other belongs is named, not parsed.
    assert!(VerifyingKey::load(&private).is_err());
    std::fs::write(dir.path().join("junk.pub"), "not a key").expect("write");
    assert!(VerifyingKey::load(&dir.path().join("junk.pub")).is_err());
}
