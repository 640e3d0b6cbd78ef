use super::Target;

#[test]
fn targets_parse_by_name() {
    assert_eq!("nftables".parse::<Target>(), Ok(Target::Nftables));
    assert_eq!(" NFTables ".parse::<Target>(), Ok(Target::Nftables));
    assert_eq!(Target::Nftables.to_string(), "nftables");
}

#[test]
fn an_unknown_target_lists_the_known_ones() {
    let error = "cilium".parse::<Target>().unwrap_err();
    assert_eq!(error, "unknown target 'cilium'; the known targets are: nftables");
}
