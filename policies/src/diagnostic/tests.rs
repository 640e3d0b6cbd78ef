use super::*;

#[test]
fn diagnostics_display_as_file_line_column_with_a_hint_line() {
    let d = Diagnostic::new("p.yaml", 3, 7, "unknown key `x`").with_hint("remove it");
    assert_eq!(d.to_string(), "p.yaml:3:7: unknown key `x`\n  hint: remove it");
    assert_eq!(
        Diagnostic::new("p.yaml", 1, 1, "empty").to_string(),
        "p.yaml:1:1: empty"
    );
}

#[test]
fn embedded_hints_are_split_back_out() {
    let d = Diagnostic::from_marked("p.yaml", 2, 4, &format!("bad{HINT_MARKER}write good"));
    assert_eq!((d.message.as_str(), d.hint.as_deref()), ("bad", Some("write good")));
    assert_eq!(Diagnostic::from_marked("p.yaml", 2, 4, "plain").hint, None);
}

#[test]
fn invalid_errors_list_every_diagnostic() {
    let err = PolicyError::Invalid(vec![
        Diagnostic::new("p.yaml", 1, 1, "first"),
        Diagnostic::new("p.yaml", 9, 2, "second").with_hint("fix"),
    ]);
    assert_eq!(err.to_string(), "p.yaml:1:1: first\np.yaml:9:2: second\n  hint: fix");
    assert_eq!(err.diagnostics().len(), 2);
}

#[test]
fn close_names_are_suggested_and_far_ones_are_not() {
    let keys = ["domain", "ports", "protocols", "rate_limit", "expires"];
    assert_eq!(did_you_mean("rate_limt", &keys), Some("rate_limit"));
    assert_eq!(did_you_mean("protocol", &keys), Some("protocols"));
    assert_eq!(did_you_mean("PORTS", &keys), Some("ports"));
    assert_eq!(did_you_mean("colour", &keys), None);
    assert_eq!(did_you_mean("", &keys), None);
}
