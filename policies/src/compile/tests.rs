use super::Target;

#[test]
fn targets_parse_by_name() {
    assert_eq!("nftables".parse::<Target>(), Ok(Target::Nftables));
    assert_eq!(" NFTables ".parse::<Target>(), Ok(Target::Nftables));
    assert_eq!(Target::Nftables.to_string(), "nftables");
    assert_eq!("cilium".parse::<Target>(), Ok(Target::Cilium));
}

#[test]
fn an_unknown_target_lists_the_known_ones() {
    let error = "iptables".parse::<Target>().unwrap_err();
    assert_eq!(
        error,
        "unknown target 'iptables'; the known targets are: nftables, cilium"
    );
}
