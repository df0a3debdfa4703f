//! SMTP through lettre on connections we open ourselves with `TCP_NODELAY` (lettre 0.11.23
//! leaves it off, and every message then waits for a delayed ACK), kept in a pool and reused:
//! plain (a relay on localhost), STARTTLS, or implicit TLS (rustls).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters,
};
use lettre::transport::smtp::extension::ClientId;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::Outcome;

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain text: for a relay on localhost.
    None,
    /// Upgrade with STARTTLS, which the server must offer.
    StartTls,
    /// TLS from the first byte (`smtps`, port 465).
    Implicit,
}

/// Where and how to connect, parsed from `smtp://[user:pass@]host[:port]` (plain),
/// `smtp+starttls://…` (port 587 by default) or `smtps://…` (port 465).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub credentials: Option<(String, String)>,
    /// Certificates (PEM) trusted besides the public roots, for a relay with its own CA.
    pub ca_pem: Option<Vec<u8>>,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("\"{url}\" is not an SMTP URL (smtp://host:port)"))?;
        let (security, default_port) = match scheme {
            "smtp" => (Security::None, 25),
            "smtp+starttls" => (Security::StartTls, 587),
            "smtps" => (Security::Implicit, 465),
            other => {
                return Err(format!(
                    "unknown SMTP scheme \"{other}\": use smtp://, smtp+starttls:// or smtps://"
                ));
            }
        };
        let rest = rest.trim_end_matches('/');
        let (credentials, hostport) = match rest.rsplit_once('@') {
            Some((auth, hp)) => {
                let (u, p) = auth.split_once(':').unwrap_or((auth, ""));
                (Some((u.to_string(), p.to_string())), hp)
            }
            None => (None, rest),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse()
                    .map_err(|_| format!("bad port \"{p}\" in the SMTP URL"))?,
            ),
            None => (hostport.to_string(), default_port),
        };
        if host.is_empty() {
            return Err("the SMTP URL names no host".into());
        }
        Ok(Target {
            host,
            port,
            security,
            credentials,
            ca_pem: None,
        })
    }

    /// Trusts the certificates in this PEM text too.
    pub fn with_ca(mut self, pem: Vec<u8>) -> Result<Target, String> {
        let found = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("bad PEM certificate: {e}"))?;
        if found.is_empty() {
            return Err("no certificate in the PEM text".into());
        }
        self.ca_pem = Some(pem);
        Ok(self)
    }

    /// TLS settings for STARTTLS (lettre's).
    fn starttls(&self) -> Result<TlsParameters, String> {
        let mut b = TlsParameters::builder(self.host.clone());
        if let Some(pem) = &self.ca_pem {
            for c in rustls_pki_types::CertificateDer::pem_slice_iter(pem).flatten() {
                b = b.add_root_certificate(
                    Certificate::from_der(c.to_vec()).map_err(|e| e.to_string())?,
                );
            }
        }
        b.build_rustls().map_err(|e| e.to_string())
    }

    /// TLS settings for implicit TLS (rustls with the public roots and `ca_pem`).
    fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(pem) = &self.ca_pem {
            for c in rustls_pki_types::CertificateDer::pem_slice_iter(pem).flatten() {
                roots
                    .add(c)
                    .map_err(|e| format!("bad CA certificate: {e}"))?;
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// A connection that holds what is written until the next read, then sends it in one go:
/// SMTP answers every command, so nothing waits on held bytes, and lettre's separate writes of
/// a message and its final dot leave as one packet instead of two.
#[derive(Debug)]
struct Coalesce<S> {
    inner: S,
    held: Vec<u8>,
}

impl<S: AsyncWrite + Unpin> Coalesce<S> {
    fn new(inner: S) -> Coalesce<S> {
        Coalesce {
            inner,
            held: Vec::new(),
        }
    }

    /// Sends everything held.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.held.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.held) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    self.held.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match this.poll_send(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_read(cx, buf),
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        // A large message goes out as it comes rather than piling up.
        if this.held.len() >= 64 * 1024 {
            match this.poll_send(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        this.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    /// Held until the next read (see the type).
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match this.poll_send(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

impl AsyncTokioStream for Coalesce<TcpStream> {
    fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.peer_addr()
    }
}

/// A TLS connection lettre can speak SMTP over.
#[derive(Debug)]
struct Tls(tokio_rustls::client::TlsStream<Coalesce<TcpStream>>);

impl AsyncRead for Tls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for Tls {
    fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.get_ref().0.inner.peer_addr()
    }
}

/// Up to `size` connections, opened on demand and reused while they last.
pub struct Pool {
    target: Target,
    hello: ClientId,
    idle: Mutex<Vec<AsyncSmtpConnection>>,
    slots: Semaphore,
}

impl Pool {
    pub fn new(target: Target, size: usize) -> Pool {
        Pool {
            target,
            hello: ClientId::Domain("localhost".into()),
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(size.max(1)),
        }
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, String> {
        let addr: Vec<SocketAddr> =
            tokio::net::lookup_host((self.target.host.as_str(), self.target.port))
                .await
                .map_err(|e| format!("cannot resolve {}: {e}", self.target.host))?
                .collect();
        let addr = addr
            .first()
            .ok_or_else(|| format!("{} has no address", self.target.host))?;
        let stream = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        .map_err(|_| format!("connecting to {addr} timed out"))?
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
        let stream: Box<dyn AsyncTokioStream> = if self.target.security == Security::Implicit {
            let name = rustls_pki_types::ServerName::try_from(self.target.host.clone())
                .map_err(|e| format!("bad TLS server name {}: {e}", self.target.host))?;
            let tls = tokio_rustls::TlsConnector::from(self.target.client_config()?)
                .connect(name, Coalesce::new(stream))
                .await
                .map_err(|e| format!("TLS with {addr} failed: {e}"))?;
            Box::new(Tls(tls))
        } else {
            Box::new(Coalesce::new(stream))
        };
        let mut conn = AsyncSmtpConnection::connect_with_transport(stream, &self.hello)
            .await
            .map_err(|e| e.to_string())?;
        if self.target.security == Security::StartTls {
            conn.starttls(self.target.starttls()?, &self.hello)
                .await
                .map_err(|e| format!("STARTTLS failed: {e}"))?;
        }
        if let Some((user, pass)) = &self.target.credentials {
            conn.auth(
                &[Mechanism::Plain, Mechanism::Login],
                &Credentials::new(user.clone(), pass.clone()),
            )
            .await
            .map_err(|e| format!("authentication failed: {e}"))?;
        }
        Ok(conn)
    }

    /// Sends one message on a pooled connection.
    pub async fn send(&self, envelope: &Envelope, bytes: &[u8]) -> Outcome {
        let Ok(_slot) = self.slots.acquire().await else {
            return Outcome::Transient("the SMTP pool is closed".into());
        };
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => match self.connect().await {
                Ok(c) => c,
                Err(e) => return Outcome::Transient(e),
            },
        };
        let sent = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            conn.send(envelope, bytes),
        )
        .await;
        match sent {
            Ok(Ok(_)) => {
                self.idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(conn);
                Outcome::Sent
            }
            Ok(Err(e)) if e.is_permanent() => {
                // The connection is still good after a refused recipient: reset and keep it.
                if conn
                    .command(lettre::transport::smtp::commands::Rset)
                    .await
                    .is_ok()
                {
                    self.idle
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(conn);
                }
                Outcome::Permanent(e.to_string())
            }
            Ok(Err(e)) => Outcome::Transient(e.to_string()),
            Err(_) => Outcome::Transient("the SMTP server did not answer in 60 s".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            Target::parse("smtp://127.0.0.1:2525").unwrap(),
            Target {
                host: "127.0.0.1".into(),
                port: 2525,
                security: Security::None,
                credentials: None,
                ca_pem: None,
            }
        );
        let t = Target::parse("smtp+starttls://me:s3cret@mail.example.com").unwrap();
        assert_eq!((t.port, t.security), (587, Security::StartTls));
        assert_eq!(t.credentials, Some(("me".into(), "s3cret".into())));
        let t = Target::parse("smtps://mail.example.com").unwrap();
        assert_eq!((t.port, t.security), (465, Security::Implicit));
        assert!(t.with_ca(b"not pem".to_vec()).is_err());
        assert!(
            Target::parse("http://x")
                .unwrap_err()
                .contains("unknown SMTP scheme")
        );
        assert!(
            Target::parse("smtp://host:port")
                .unwrap_err()
                .contains("bad port")
        );
    }
}
