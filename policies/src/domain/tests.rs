use super::*;

#[test]
fn case_trailing_dot_and_idna_are_normalized() {
    assert_eq!(normalize_domain("API.OpenAI.com.").unwrap(), "api.openai.com");
    assert_eq!(normalize_domain("bücher.example").unwrap(), "xn--bcher-kva.example");
    assert_eq!(
        normalize_domain("XN--BCHER-KVA.example").unwrap(),
        "xn--bcher-kva.example"
    );
}

#[test]
fn malformed_names_are_rejected() {
    for bad in [
        "",
        ".",
        "a..b",
        "-a.com",
        "a-.com",
        "a b.com",
        "a/b.com",
        "xn--zz--.com",
        "a.com..",
        "*.a.com",
    ] {
        assert!(normalize_domain(bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn length_limits_are_enforced() {
    let label63 = "a".repeat(63);
    assert!(normalize_domain(&format!("{label63}.com")).is_ok());
    assert!(normalize_domain(&format!("{label63}a.com")).is_err());
    let long = vec!["abcdefghi"; 26].join(".");
    assert!(long.len() > 253);
    assert!(normalize_domain(&long).is_err());
}

#[test]
fn error_names_the_input_and_the_problem() {
    let err = normalize_domain("a..b").unwrap_err();
    assert_eq!(err.input, "a..b");
    assert!(err.to_string().contains("empty label"), "{err}");
}
