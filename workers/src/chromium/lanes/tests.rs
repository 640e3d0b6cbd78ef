use super::storage_origin;

#[test]
fn a_document_s_storage_origin_is_its_scheme_host_and_port() {
    assert_eq!(
        storage_origin("http://site.test:8080/a/b?c#d").as_deref(),
        Some("http://site.test:8080")
    );
    assert_eq!(
        storage_origin("https://Example.COM/").as_deref(),
        Some("https://example.com")
    );
    // The default port is not spelled out, as Chromium keys storage.
    assert_eq!(
        storage_origin("https://example.com:443/x").as_deref(),
        Some("https://example.com")
    );
    assert_eq!(
        storage_origin("http://[::1]:3000/").as_deref(),
        Some("http://[::1]:3000")
    );
}

#[test]
fn documents_without_storage_of_their_own_have_no_origin_to_clear() {
    for url in [
        "about:blank",
        "data:text/html,<p>x",
        "blob:http://site.test/uuid",
        "chrome://version",
        "not a url",
    ] {
        assert_eq!(storage_origin(url), None, "{url}");
    }
}
