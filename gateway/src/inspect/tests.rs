use super::*;

#[test]
fn a_redacted_query_keeps_the_path_and_authority() {
    let uri: http::Uri = "http://api.test:8080/v1/search?q=x&key=1".parse().unwrap();
    let rewritten = with_query(&uri, "q=x&key=%5BREDACTED%5D").unwrap();
    assert_eq!(
        rewritten.to_string(),
        "http://api.test:8080/v1/search?q=x&key=%5BREDACTED%5D"
    );
    let emptied = with_query(&uri, "").unwrap();
    assert_eq!(emptied.to_string(), "http://api.test:8080/v1/search");
}

#[test]
fn a_block_lists_only_the_blocking_kinds() {
    let mut policy = clawgress_policies::model::DlpPolicy::default();
    policy.actions.pii = DlpAction::Alert;
    let engine = Engine::new(&policy);
    let report = engine.scan(b"mail ada@example.org the key AKIAIOSFODNN7EXAMPLE and AKIAI44QH8DHBEXAMPLE");
    assert_eq!(report.action, Some(DlpAction::Block));
    match blocked(&engine, &report) {
        Refusal::Dlp(DlpRefusal::Blocked { kinds, class }) => {
            assert_eq!(kinds, vec!["aws_access_key"]);
            assert_eq!(class, Class::Secret);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn disabled_dlp_builds_no_engine() {
    let mut policy = clawgress_policies::model::DlpPolicy::default();
    assert!(engine_for(&policy).is_some());
    policy.enabled = false;
    assert!(engine_for(&policy).is_none());
}
