//! The HTTP client autofunnel calls out with (webhooks, a payment provider's API): rustls with
//! ring and the webpki roots, the TLS stack SMTP uses.

use std::sync::Arc;

/// Makes rustls with ring (the TLS stack SMTP uses too) the process's default, which HTTP
/// clients built without their own TLS settings take; again is harmless.
pub fn install_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTP client for calls out: rustls with ring and the webpki roots (the TLS stack SMTP
/// uses), no redirects followed, `timeout` for each answer.
pub fn http_client(timeout: std::time::Duration) -> reqwest::Client {
    install_tls();
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("autofunnel/", env!("CARGO_PKG_VERSION")));
    if let Ok(tls) = tls {
        builder = builder.tls_backend_preconfigured(tls);
    }
    builder.build().unwrap_or_default()
}
