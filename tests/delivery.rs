//! The sender against a real SMTP conversation on 127.0.0.1: an in-process server that keeps
//! the bytes it receives and refuses some recipients (550), defers others (451) or hangs up.
//! Checked: the message's structure, headers and encodings; retries with backoff; a refused
//! address failed, suppressed and reported as `bounced`; nothing sent twice.

use std::sync::{Arc, Mutex};

use autofunnel::delivery::{Sender, Tally, Transport, smtp};
use autofunnel::domain::{Consent, Email, LeadId};
use autofunnel::project;
use autofunnel::runtime::Runtime;
use autofunnel::settings::Settings;
use autofunnel::store::{LeadInput, Store};
use chrono::{DateTime, Duration, TimeZone, Utc};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::util::{on_both_backends, root};

/// One message as the server received it.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) rcpt: String,
    pub(crate) data: String,
}

/// How the test server secures its connections.
#[derive(Clone)]
enum Security {
    None,
    /// Offers STARTTLS and takes mail only after it.
    StartTls(tokio_rustls::TlsAcceptor),
    /// TLS from the first byte.
    Implicit(tokio_rustls::TlsAcceptor),
}

/// A server certificate for `localhost` and the PEM text a client needs to trust it.
fn certificate() -> (tokio_rustls::TlsAcceptor, Vec<u8>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        cert.cert.pem().into_bytes(),
    )
}

/// A small SMTP server: `bounce*` recipients get 550, `later*` get 451 the first time, `busy*`
/// get 421 and a closed connection the first time, and `hangup*` recipients have the
/// connection dropped after DATA.
pub(crate) async fn smtp_server() -> (u16, Arc<Mutex<Vec<Received>>>) {
    let (port, got, _) = smtp_server_with(Security::None).await;
    (port, got)
}

/// The server's port, what it received, and how many connections are open.
async fn smtp_server_with(
    tls: Security,
) -> (
    u16,
    Arc<Mutex<Vec<Received>>>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counting = open.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let deferred: Arc<Mutex<Vec<String>>> = Arc::default();
    let keep = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let (got, deferred, tls) = (keep.clone(), deferred.clone(), tls.clone());
            let open = counting.clone();
            open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                // Closed however the session ends.
                struct Closing(Arc<std::sync::atomic::AtomicUsize>);
                impl Drop for Closing {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                let _closing = Closing(open);
                match tls {
                    Security::None => session(sock, true, got, deferred).await,
                    Security::Implicit(acceptor) => {
                        if let Ok(s) = acceptor.accept(sock).await {
                            session(s, true, got, deferred).await
                        }
                    }
                    Security::StartTls(acceptor) => {
                        let mut lines = BufReader::new(sock);
                        lines
                            .get_mut()
                            .write_all(b"220 test ESMTP\r\n")
                            .await
                            .unwrap();
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            let reply: &[u8] = match line.trim().to_ascii_uppercase().as_str() {
                                l if l.starts_with("EHLO") => b"250-test\r\n250 STARTTLS\r\n",
                                "STARTTLS" => b"220 go ahead\r\n",
                                _ => b"530 5.7.0 must issue STARTTLS first\r\n",
                            };
                            lines.get_mut().write_all(reply).await.unwrap();
                            if reply.starts_with(b"220") {
                                break;
                            }
                        }
                        if let Ok(s) = acceptor.accept(lines.into_inner()).await {
                            session(s, false, got, deferred).await
                        }
                    }
                }
            });
        }
    });
    (port, got, open)
}

/// One SMTP conversation after any TLS handshake.
async fn session<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    sock: S,
    greet: bool,
    got: Arc<Mutex<Vec<Received>>>,
    deferred: Arc<Mutex<Vec<String>>>,
) {
    let (r, mut w) = tokio::io::split(sock);
    let mut lines = BufReader::new(r).lines();
    if greet {
        w.write_all(b"220 test ESMTP\r\n").await.unwrap();
    }
    let mut rcpt = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-test\r\n250-8BITMIME\r\n250-AUTH PLAIN\r\n250 SMTPUTF8\r\n"
        } else if upper.starts_with("AUTH PLAIN ") {
            // The only account: me / s3cret.
            use base64::Engine as _;
            let given = base64::engine::general_purpose::STANDARD
                .decode(line[11..].trim())
                .unwrap_or_default();
            if given == b"\0me\0s3cret" {
                b"235 2.7.0 authenticated\r\n"
            } else {
                b"535 5.7.8 bad credentials\r\n"
            }
        } else if upper.starts_with("MAIL FROM") || upper.starts_with("RSET") {
            b"250 OK\r\n"
        } else if upper.starts_with("RCPT TO") {
            rcpt = line[8..].trim().trim_matches(['<', '>']).to_string();
            let who = rcpt.clone();
            if who.starts_with("bounce") {
                b"550 5.1.1 no such user\r\n"
            } else if who.starts_with("later") && !deferred.lock().unwrap().contains(&who) {
                deferred.lock().unwrap().push(who);
                b"451 4.7.1 try again later\r\n"
            } else if who.starts_with("busy") && !deferred.lock().unwrap().contains(&who) {
                // 421: the server is closing the connection.
                deferred.lock().unwrap().push(who);
                let _ = w.write_all(b"421 4.3.2 too busy, closing\r\n").await;
                return;
            } else {
                b"250 OK\r\n"
            }
        } else if upper == "DATA" {
            w.write_all(b"354 go on\r\n").await.unwrap();
            let mut data = String::new();
            let mut complete = false;
            while let Ok(Some(l)) = lines.next_line().await {
                if l == "." {
                    complete = true;
                    break;
                }
                data.push_str(&l);
                data.push('\n');
            }
            // A message cut off before its final dot was never accepted.
            if !complete || rcpt.starts_with("hangup") {
                return;
            }
            got.lock().unwrap().push(Received {
                rcpt: rcpt.clone(),
                data,
            });
            b"250 queued\r\n"
        } else if upper == "QUIT" {
            let _ = w.write_all(b"221 bye\r\n").await;
            return;
        } else {
            b"500 what\r\n"
        };
        if w.write_all(reply).await.is_err() {
            return;
        }
    }
}

fn t0() -> DateTime<Utc> {
    // Tuesday 12:00 in Moscow: inside the funnel's send window.
    Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap()
}

async fn setup(
    store: &Store,
    names: &[(&str, &str)],
) -> (Arc<Runtime>, Arc<project::Project>, Vec<LeadId>) {
    store.migrate().await.unwrap();
    let settings = Settings {
        funnels_dir: root().join("funnels"),
        templates_dir: root().join("templates"),
        ..Default::default()
    };
    let (p, report) = project::check(&settings, None);
    let p = Arc::new(p.unwrap_or_else(|| panic!("{:?}", report.diagnostics)));
    let rt = Arc::new(
        Runtime::new(store.clone(), p.funnels.clone(), "node-a", t0())
            .await
            .unwrap(),
    );
    let leads: Vec<(Email, LeadInput)> = names
        .iter()
        .map(|(email, name)| {
            (
                Email::parse(email).unwrap(),
                LeadInput {
                    first_name: Some(name.to_string()),
                    timezone: Some(chrono_tz::Europe::Moscow),
                    ..Default::default()
                },
            )
        })
        .collect();
    let ids = store
        .import_leads(&leads, Consent::Confirmed, t0())
        .await
        .unwrap();
    rt.enroll_many(&ids, &crate::util::fid("yoga-course-ru"), t0())
        .await
        .unwrap();
    (rt, p, ids)
}

async fn statuses(store: &Store) -> Vec<(String, i64)> {
    store.outbox_counts().await.unwrap()
}

async fn smtp_delivery_retries_and_bounces(store: Store) {
    let (port, got) = smtp_server().await;
    let (rt, p, ids) = setup(
        &store,
        &[
            ("anna@example.com", "Анна Петрова"),
            ("later@example.com", "Later"),
            ("bounce@example.com", "Bounce"),
            ("hangup@example.com", "Hangup"),
            ("busy@example.com", "Busy"),
        ],
    )
    .await;
    let target = smtp::Target::parse(&format!("smtp://127.0.0.1:{port}")).unwrap();
    let sender = Sender::new(
        store.outbox(),
        p,
        Transport::smtp(target, 4),
        "https://go.example.com",
        b"test secret",
    );
    let tally = sender.round(t0()).await.unwrap();
    assert_eq!(
        tally,
        Tally {
            sent: 1,
            retried: 3,
            failed: 1,
            suppressed: 0
        }
    );
    let received = got.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    let m = &received[0];
    assert_eq!(m.rcpt, "anna@example.com");
    let d = &m.data;
    // Non-ASCII display names and subject are RFC 2047 encoded; the body parts are declared.
    assert!(d.contains("From: =?utf-8?"), "{d}");
    assert!(d.contains("<maria@example.ru>"), "{d}");
    assert!(d.contains("To: =?utf-8?"), "{d}");
    assert!(d.contains("Subject: =?utf-8?"), "{d}");
    assert!(d.contains("Message-ID: <"), "{d}");
    assert!(d.contains("Date: "), "{d}");
    assert!(
        d.contains("List-Unsubscribe: <https://go.example.com/u/"),
        "{d}"
    );
    assert!(
        d.contains("<mailto:maria@example.ru?subject=unsubscribe>"),
        "{d}"
    );
    assert!(
        d.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "{d}"
    );
    assert!(d.contains("Content-Type: multipart/alternative"), "{d}");
    assert!(d.contains("Content-Type: text/plain; charset=utf-8"), "{d}");
    assert!(d.contains("Content-Type: text/html; charset=utf-8"), "{d}");
    assert!(d.lines().all(|l| l.len() <= 998), "a line over 998 bytes");

    // The refused address: failed, suppressed, and the engine heard `bounced`.
    let bounce = ids[2];
    let events: Vec<String> = store
        .lead_events(bounce)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(events, ["bounced"]);
    let facts = rt.lead_facts(bounce, t0()).await.unwrap();
    assert!(!facts.mailable);

    // Deferred and dropped ones are retried after their backoff, not before.
    assert_eq!(
        sender.round(t0() + Duration::seconds(30)).await.unwrap(),
        Tally::default()
    );
    let tally = sender.round(t0() + Duration::minutes(2)).await.unwrap();
    assert_eq!(tally.sent, 2, "{tally:?}");
    assert_eq!(tally.retried, 1, "hangup is retried again");
    let mut rcpts: Vec<String> = got.lock().unwrap().iter().map(|r| r.rcpt.clone()).collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        ["anna@example.com", "busy@example.com", "later@example.com"]
    );
    // Nothing is sent twice, however often the sender runs.
    for m in [3, 4, 5] {
        sender.round(t0() + Duration::minutes(m)).await.unwrap();
    }
    assert_eq!(got.lock().unwrap().len(), 3);
    assert_eq!(
        statuses(&store).await,
        [
            ("failed".to_string(), 1),
            ("queued".to_string(), 1),
            ("sent".to_string(), 3)
        ]
    );
}

async fn the_default_transport_writes_eml_files(store: Store) {
    let (_, p, _) = setup(&store, &[("anna@example.com", "Анна")]).await;
    let dir = tempfile::tempdir().unwrap();
    let sender = Sender::new(
        store.outbox(),
        p,
        Transport::Folder(dir.path().to_path_buf()),
        "http://127.0.0.1:8080",
        b"k",
    )
    .with_dkim(Some(
        autofunnel::delivery::dkim("mail2026", "example.ru", &base64_key()).unwrap(),
    ));
    assert_eq!(sender.round(t0()).await.unwrap().sent, 1);
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    assert!(files[0].extension().is_some_and(|e| e == "eml"));
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));
    // Signed with the configured key: Ed25519, the selector and domain given, From covered.
    let unfolded = text.replace("\r\n ", " ").replace("\r\n\t", " ");
    let dkim = unfolded
        .split("\r\n")
        .find(|l| l.starts_with("DKIM-Signature:"))
        .unwrap_or_else(|| panic!("no DKIM-Signature in {text}"));
    assert!(dkim.contains("a=ed25519-sha256;"), "{dkim}");
    assert!(dkim.contains("d=example.ru;"), "{dkim}");
    assert!(dkim.contains("s=mail2026;"), "{dkim}");
    assert!(
        dkim.contains("h=from:to:subject:date:message-id:list-unsubscribe:list-unsubscribe-post"),
        "{dkim}"
    );
    assert_eq!(statuses(&store).await, [("sent".to_string(), 1)]);
}

/// A fixed Ed25519 DKIM key, as the base64 text a key file holds.
fn base64_key() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode([7u8; 32])
}

/// An independent verifier: dkimpy (`pip install dkimpy`) checks an RSA signature made with a
/// key from `openssl genrsa`, the public key served by a stand-in DNS lookup; a changed
/// `List-Unsubscribe-Post` breaks it. Skipped, and says so, where either tool is missing.
#[tokio::test]
async fn dkim_verifies_with_dkimpy() {
    let ready = std::process::Command::new("python3")
        .args(["-c", "import dkim"])
        .status()
        .is_ok_and(|s| s.success())
        && std::process::Command::new("openssl")
            .arg("version")
            .status()
            .is_ok_and(|s| s.success());
    if !ready {
        eprintln!("SKIPPED dkim_verifies_with_dkimpy: needs python3 with dkimpy and openssl");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("dkim.pem");
    let ok = std::process::Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg("2048")
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    let store = Store::connect(&format!("sqlite://{}/d.db", dir.path().display()))
        .await
        .unwrap();
    let (_, p, _) = setup(&store, &[("anna@example.com", "Анна")]).await;
    let outbox = dir.path().join("outbox");
    std::fs::create_dir(&outbox).unwrap();
    let pem = std::fs::read_to_string(&key).unwrap();
    let sender = Sender::new(
        store.outbox(),
        p,
        Transport::Folder(outbox.clone()),
        "http://127.0.0.1:8080",
        b"k",
    )
    .with_dkim(Some(
        autofunnel::delivery::dkim("sel", "example.ru", &pem).unwrap(),
    ));
    assert_eq!(sender.round(t0()).await.unwrap().sent, 1);
    let eml = std::fs::read_dir(&outbox)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let script = r#"
import base64, subprocess, sys, dkim
key, eml = sys.argv[1], sys.argv[2]
der = subprocess.run(["openssl", "rsa", "-in", key, "-pubout", "-outform", "DER"],
                     capture_output=True, check=True).stdout
record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
def dns(name, timeout=5):
    assert name == b"sel._domainkey.example.ru.", name
    return record
msg = open(eml, "rb").read()
tampered = msg.replace(b"List-Unsubscribe=One-Click", b"List-Unsubscribe=Two-Click")
print(dkim.verify(msg, dnsfunc=dns), dkim.verify(tampered, dnsfunc=dns))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&key)
        .arg(&eml)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        said.trim(),
        "True False",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dkim_keys_are_checked() {
    let bad = autofunnel::delivery::dkim("s", "example.com", "not a key").unwrap_err();
    assert!(bad.contains("bad DKIM key"), "{bad}");
    let pkcs8 = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----";
    let bad = autofunnel::delivery::dkim("s", "example.com", pkcs8).unwrap_err();
    assert!(bad.contains("PKCS#1"), "{bad}");
}

/// A sender killed mid-drain (its runtime torn down with sends in flight) loses nothing; the
/// only repeats are messages in flight at that instant: accepted by the server but not yet
/// recorded as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_sender_loses_nothing_and_repeats_only_what_was_in_flight() {
    const N: usize = 300;
    const CONNECTIONS: usize = 4;
    let (port, got, open) = smtp_server_with(Security::None).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/crash.db", dir.path().display());
    let store = Store::connect(&url).await.unwrap();
    let names: Vec<(String, String)> = (0..N)
        .map(|i| (format!("lead{i}@example.com"), format!("Lead {i}")))
        .collect();
    let refs: Vec<(&str, &str)> = names
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let (_, p, _) = setup(&store, &refs).await;
    let target = smtp::Target::parse(&format!("smtp://127.0.0.1:{port}")).unwrap();

    // The doomed sender runs on a runtime of its own, with its own database connections.
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (p2, t2) = (p.clone(), target.clone());
    let url2 = url.clone();
    doomed.spawn(async move {
        let store = Store::connect(&url2).await.unwrap();
        let sender = Sender::new(
            store.outbox(),
            p2,
            Transport::smtp(t2, CONNECTIONS),
            "https://go.example.com",
            b"test secret",
        );
        let _ = sender.drain(t0()).await;
    });
    // Crash once a third has been received, whatever is in flight.
    loop {
        if got.lock().unwrap().len() >= N / 3 {
            break;
        }
        tokio::task::yield_now().await;
    }
    doomed.shutdown_background();
    // The server may still be reading what the dead sender wrote before it died: count what
    // it accepted only once the dead connections are closed.
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while open.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the dead sender's connections close");
    let at_crash = got.lock().unwrap().len();
    assert!(at_crash < N, "the sender finished before the crash");
    let recorded = statuses(&store)
        .await
        .into_iter()
        .find(|(s, _)| s == "sent")
        .map_or(0, |(_, n)| n as usize);
    // Accepted by the server but not yet recorded as sent when the sender died: the only
    // messages that may go out twice.
    let unrecorded = got.lock().unwrap().len() - recorded;

    // After the lease, another sender finishes the job.
    let sender = Sender::new(
        store.outbox(),
        p,
        Transport::smtp(target, CONNECTIONS),
        "https://go.example.com",
        b"test secret",
    );
    sender
        .drain(t0() + autofunnel::delivery::LEASE + Duration::seconds(1))
        .await
        .unwrap();
    let received = got.lock().unwrap().clone();
    let ids: std::collections::BTreeSet<String> = received
        .iter()
        .map(|r| {
            r.data
                .lines()
                .find(|l| l.starts_with("Message-ID:"))
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), N, "a message was lost");
    let repeated = received.len() - N;
    println!("crash after {at_crash} of {N} received, {recorded} recorded: {repeated} sent twice");
    assert!(
        repeated <= unrecorded,
        "{repeated} messages sent twice, but only {unrecorded} were in flight"
    );
    assert_eq!(statuses(&store).await, [("sent".to_string(), N as i64)]);
}

/// STARTTLS and implicit TLS with AUTH against a server whose certificate the settings trust:
/// the message arrives over TLS only (the STARTTLS server refuses mail before the upgrade); an
/// untrusted certificate or a wrong password is a transient failure, not a send in the clear.
#[tokio::test]
async fn smtp_over_starttls_and_implicit_tls() {
    let (acceptor, ca) = certificate();
    for (scheme, tls) in [
        ("smtp+starttls", Security::StartTls(acceptor.clone())),
        ("smtps", Security::Implicit(acceptor.clone())),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/tls.db", dir.path().display());
        let store = Store::connect(&url).await.unwrap();
        let (_, p, _) = setup(&store, &[("anna@example.com", "Anna")]).await;
        let (port, got, _) = smtp_server_with(tls).await;
        let url = format!("{scheme}://me:s3cret@localhost:{port}");
        // Without the CA the certificate is not trusted and nothing is sent.
        let untrusted = Sender::new(
            store.outbox(),
            p.clone(),
            Transport::smtp(smtp::Target::parse(&url).unwrap(), 1),
            "https://go.example.com",
            b"test secret",
        );
        let tally = untrusted.round(t0()).await.unwrap();
        assert_eq!((tally.sent, tally.retried), (0, 1), "{scheme}");
        assert!(got.lock().unwrap().is_empty());
        let target = smtp::Target::parse(&url)
            .unwrap()
            .with_ca(ca.clone())
            .unwrap();
        let sender = Sender::new(
            store.outbox(),
            p.clone(),
            Transport::smtp(target, 1),
            "https://go.example.com",
            b"test secret",
        );
        // Trusted, but the wrong password: refused at AUTH, retried later.
        let wrong = smtp::Target::parse(&format!("{scheme}://me:wrong@localhost:{port}"))
            .unwrap()
            .with_ca(ca.clone())
            .unwrap();
        let refused = Sender::new(
            store.outbox(),
            p.clone(),
            Transport::smtp(wrong, 1),
            "https://go.example.com",
            b"test secret",
        );
        let tally = refused.round(t0() + Duration::minutes(5)).await.unwrap();
        assert_eq!((tally.sent, tally.retried), (0, 1), "{scheme}");
        let later = t0() + Duration::minutes(15);
        assert_eq!(sender.round(later).await.unwrap().sent, 1, "{scheme}");
        let received = got.lock().unwrap().clone();
        assert_eq!(received.len(), 1, "{scheme}");
        assert_eq!(received[0].rcpt, "anna@example.com");
        assert!(
            received[0]
                .data
                .contains("Content-Type: multipart/alternative")
        );
    }
}

/// Under a `send_rate` a round claims about two seconds' worth, so a stop waits for the rounds
/// in flight, not for the backlog, and leaves nothing leased: the rest stays queued.
async fn a_stop_under_a_send_rate_leaves_the_rest_queued(store: Store) {
    let names: Vec<(String, String)> = (0..12)
        .map(|i| (format!("p{i}@example.com"), format!("P{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = names
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let (_, p, _) = setup(&store, &refs).await;
    assert_eq!(statuses(&store).await, [("queued".to_string(), 12)]);
    let dir = tempfile::tempdir().unwrap();
    let sender = Sender::new(
        store.outbox(),
        p,
        Transport::Folder(dir.path().to_path_buf()),
        "http://127.0.0.1:8080",
        b"k",
    )
    .with_rate(Some(1.0));
    // Stop once the first email is out.
    let first_out = async {
        for _ in 0..1000 {
            if std::fs::read_dir(dir.path()).unwrap().next().is_some() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("no email was sent in 10 s");
    };
    sender.run(first_out).await;
    let after: std::collections::HashMap<String, i64> =
        statuses(&store).await.into_iter().collect();
    assert_eq!(after.get("sending"), None, "{after:?}");
    let sent = after.get("sent").copied().unwrap_or(0);
    assert!((1..=4).contains(&sent), "{after:?}");
    assert_eq!(
        after.get("queued").copied().unwrap_or(0),
        12 - sent,
        "{after:?}"
    );
}

/// Regression: a lead whose stored name holds a line break (or is 60,000 characters long) made
/// composing the `To:` header panic, which took the whole round with it — every email of the
/// round stayed `sending` and came back after its lease, forever. Now each email is made on
/// its own: the odd names become one clean header line, and every healthy lead gets its email
/// once.
async fn a_poison_lead_delays_nobody(store: Store) {
    let long = "x".repeat(60_000);
    let names = [
        ("anna@example.com", "Анна"),
        ("evil@example.com", "Evil\r\nBcc: victim@example.net"),
        ("boris@example.com", "Boris"),
        ("long@example.com", long.as_str()),
        ("clara@example.com", "Clara"),
    ];
    let (_, p, _) = setup(&store, &names).await;
    let dir = tempfile::tempdir().unwrap();
    let sender = Sender::new(
        store.outbox(),
        p,
        Transport::Folder(dir.path().to_path_buf()),
        "http://127.0.0.1:8080",
        b"poison test secret",
    );
    let tally = sender.drain(t0()).await.unwrap();
    assert_eq!(tally.sent, 5, "{tally:?}");
    assert_eq!(statuses(&store).await, [("sent".to_string(), 5)]);
    // Nothing is left to send again, at any later time.
    let later = sender.drain(t0() + Duration::hours(1)).await.unwrap();
    assert_eq!(later, Tally::default());
    let mut names = Vec::new();
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let raw = std::fs::read(f.unwrap().path()).unwrap();
        let text = String::from_utf8_lossy(&raw);
        let head = text.split("\r\n\r\n").next().unwrap();
        assert!(!head.contains("\r\nBcc:"), "{head}");
        assert!(
            text.split("\r\n").all(|l| l.len() <= 998),
            "a line over 998 bytes"
        );
        let m = mail_parser::MessageParser::default().parse(&raw).unwrap();
        assert!(m.bcc().is_none());
        let to = m.to().and_then(|a| a.first()).unwrap();
        names.push(to.name().unwrap_or_default().to_string());
    }
    names.sort();
    assert_eq!(names.len(), 5);
    assert!(
        names.contains(&"Evil Bcc: victim@example.net".to_string()),
        "{names:?}"
    );
    assert!(names.iter().all(|n| n.chars().count() <= 100), "{names:?}");
}

/// A message whose attempts never end (its sender dies each time) is parked as `failed` after
/// eight claims, not claimed again forever.
async fn unfinished_sends_are_parked(store: Store) {
    setup(&store, &[("anna@example.com", "Anna")]).await;
    let outbox = store.outbox();
    let lease = Duration::minutes(5);
    let mut at = t0();
    for attempt in 1..=8 {
        let claimed = outbox.claim(8, at, lease, 10).await.unwrap();
        assert_eq!(claimed.len(), 1, "attempt {attempt}");
        assert_eq!(claimed[0].attempts, attempt);
        at += lease + Duration::seconds(1);
    }
    assert!(outbox.claim(8, at, lease, 10).await.unwrap().is_empty());
    assert_eq!(statuses(&store).await, [("failed".to_string(), 1)]);
}

/// The documented idiom for a field a lead may not have given: `| default(value=…)` takes
/// its place, whether the field is missing, null or empty.
#[tokio::test]
async fn a_missing_name_falls_back_to_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let p = crate::util::project_of(
        dir.path(),
        &[
            (
                "funnels/hello.yaml",
                "name: Hello\nfrom: \"Shop <shop@example.com>\"\nentry: { api: true }\n\
                 stages:\n  - id: hello\n    steps:\n      - send: hi\n      - wait: 30d\n",
            ),
            ("templates/hello/hi.subject", "Hello"),
            (
                "templates/hello/hi.html",
                "<p>Hi {{ lead.first_name | default(value=\"friend\") }} from {{ lead.city | default(value=\"your city\") }}!{{ lead.phone }}</p>",
            ),
        ],
    );
    let store = Store::connect(&format!("sqlite://{}/t.db", dir.path().display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let rt = Runtime::new(store.clone(), p.funnels.clone(), "node-a", t0())
        .await
        .unwrap();
    let mut empty_city = LeadInput {
        first_name: Some("Ann".into()),
        ..Default::default()
    };
    empty_city.fields.insert("city".into(), "".into());
    let leads = [
        (
            Email::parse("nobody@example.com").unwrap(),
            LeadInput::default(),
        ),
        (Email::parse("ann@example.com").unwrap(), empty_city),
    ];
    let ids = store
        .import_leads(&leads, Consent::Confirmed, t0())
        .await
        .unwrap();
    rt.enroll_many(&ids, &crate::util::fid("hello"), t0())
        .await
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let sender = Sender::new(
        store.outbox(),
        p,
        Transport::Folder(out.path().to_path_buf()),
        "http://127.0.0.1:8080",
        b"k",
    );
    assert_eq!(sender.round(t0()).await.unwrap().sent, 2);
    let mut bodies: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| {
            let raw = std::fs::read(e.unwrap().path()).unwrap();
            let m = mail_parser::MessageParser::default().parse(&raw).unwrap();
            m.body_text(0).unwrap().trim().to_string()
        })
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        ["Hi Ann from your city!", "Hi friend from your city!"]
    );
}

on_both_backends! {
    poison_lead => a_poison_lead_delays_nobody,
    parked_sends => unfinished_sends_are_parked,
    smtp_retries_and_bounces => smtp_delivery_retries_and_bounces,
    eml_files => the_default_transport_writes_eml_files,
    stop_under_send_rate => a_stop_under_a_send_rate_leaves_the_rest_queued,
}
