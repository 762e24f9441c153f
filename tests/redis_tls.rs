//! Redis over TLS (`rediss://`, feature `tls`), against a real `redis-server` listening with
//! `--tls-port` on a certificate made at test time by `openssl` (a throwaway CA, nothing
//! committed). The bus verifies the server against the CA it is told to trust
//! (`SSL_CERT_FILE`), and refuses one signed by another CA. Without the feature, a `rediss://`
//! URL is refused with an error saying so.
#![cfg(feature = "redis")]

mod support;

use tower_sse::{EventBus, RedisConfig};

#[cfg(not(feature = "tls"))]
#[tokio::test]
async fn rediss_urls_need_the_tls_feature() {
    let config = RedisConfig::new("rediss://127.0.0.1:1/");
    let error = EventBus::builder()
        .redis_pubsub(config)
        .await
        .expect_err("no TLS without the feature");
    assert!(error.is_unavailable(), "{error}");
    assert!(error.to_string().contains("`tls` feature"), "{error}");
}

#[cfg(feature = "tls")]
mod tls {
    use std::{
        net::{Ipv4Addr, TcpStream},
        path::{Path, PathBuf},
        process::{Child, Command, Stdio},
        time::{Duration, Instant},
    };

    use super::*;
    use crate::support::{
        bus::{next_event, publish, within},
        redis::{free_port, RedisServer},
    };

    /// A directory of its own, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("tower-sse-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create a temporary directory");
            Self(dir)
        }

        fn file(&self, name: &str) -> String {
            self.0.join(name).to_string_lossy().into_owned()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn openssl(dir: &Path, args: &[&str]) -> bool {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Makes `{name}-ca.crt` and a certificate it signed for 127.0.0.1 and localhost,
    /// `{name}.crt` with its key `{name}.key`. False when `openssl` is missing or fails.
    fn make_certificates(dir: &TempDir, name: &str) -> bool {
        let ca = format!("{name}-ca");
        let ca_subject = format!("/CN=tower-sse test CA {name}");
        let san = "subjectAltName=IP:127.0.0.1,DNS:localhost";
        std::fs::write(dir.0.join("san.cnf"), format!("{san}\n")).expect("write the extension");
        let steps: [Vec<String>; 3] = [
            vec![
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                &ca_subject,
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
            ]
            .into_iter()
            .map(str::to_owned)
            .collect(),
            vec![
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ]
            .into_iter()
            .map(str::to_owned)
            .collect(),
            vec![
                "x509",
                "-req",
                "-days",
                "1",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.crt"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-extfile",
                "san.cnf",
                "-out",
                &format!("{name}.crt"),
            ]
            .into_iter()
            .map(str::to_owned)
            .collect(),
        ];
        steps.iter().all(|step| {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            openssl(&dir.0, &args)
        })
    }

    /// A `redis-server` that speaks TLS only, killed when dropped.
    struct TlsServer {
        port: u16,
        child: Child,
    }

    impl TlsServer {
        /// Starts one with the certificate `{name}.crt`, or `None` when this `redis-server` was
        /// built without TLS.
        fn start(dir: &TempDir, name: &str) -> Option<Self> {
            let port = free_port();
            let mut child = Command::new("redis-server")
                .args(["--port", "0", "--bind", "127.0.0.1"])
                .args(["--tls-port", &port.to_string()])
                .args(["--tls-cert-file", &dir.file(&format!("{name}.crt"))])
                .args(["--tls-key-file", &dir.file(&format!("{name}.key"))])
                .args(["--tls-ca-cert-file", &dir.file(&format!("{name}-ca.crt"))])
                .args(["--tls-auth-clients", "no"])
                .args(["--save", "", "--appendonly", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
                if child.try_wait().ok().flatten().is_some() {
                    return None;
                }
                assert!(Instant::now() < deadline, "redis-server did not listen");
                std::thread::sleep(Duration::from_millis(20));
            }
            Some(Self { port, child })
        }

        fn url(&self) -> String {
            format!("rediss://127.0.0.1:{}/", self.port)
        }
    }

    impl Drop for TlsServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn skip(reason: &str) {
        if std::env::var("TOWER_SSE_REQUIRE_REDIS").as_deref() == Ok("1") {
            panic!("{reason}, and TOWER_SSE_REQUIRE_REDIS=1");
        }
        eprintln!("SKIPPED: {reason} (set TOWER_SSE_REQUIRE_REDIS=1 to fail)");
    }

    /// One test, so the trusted roots (`SSL_CERT_FILE`) are set before anything in this
    /// process connects.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rediss_urls_connect_with_verified_tls() {
        let Some(plain) = RedisServer::start() else {
            return;
        };
        let dir = TempDir::new("tls");
        if !make_certificates(&dir, "trusted") || !make_certificates(&dir, "stranger") {
            return skip("openssl could not make certificates");
        }
        std::env::set_var("SSL_CERT_FILE", dir.file("trusted-ca.crt"));
        let Some(server) = TlsServer::start(&dir, "trusted") else {
            return skip("redis-server was built without TLS");
        };

        for streams in [false, true] {
            let config = RedisConfig::new(server.url());
            let connecting = async {
                match streams {
                    true => EventBus::builder().redis_streams(config).await,
                    false => EventBus::builder().redis_pubsub(config).await,
                }
            };
            let bus = within("connecting over TLS", connecting)
                .await
                .expect("the server's certificate is trusted");
            assert!(bus.health().is_healthy());
            let mut sub = bus.subscribe(["secure"], None).await.unwrap();
            let id = publish(&bus, "secure", "over TLS").await;
            assert_eq!(next_event(&mut sub).await.id(), id);
        }

        // A certificate from a CA nobody trusts here.
        let stranger = TlsServer::start(&dir, "stranger").expect("a second TLS server");
        let refused = EventBus::builder()
            .redis_pubsub(RedisConfig::new(stranger.url()))
            .await
            .expect_err("an untrusted certificate");
        assert!(refused.is_unavailable(), "{refused}");
        let message = refused.to_string();
        assert!(
            message.contains("cannot connect to Redis at 127.0.0.1"),
            "{message}"
        );

        // TLS spoken to a plain server, and plain text to a TLS one: clear errors, no hang.
        let mismatched = [
            format!("rediss://127.0.0.1:{}/", plain.port()),
            format!("redis://127.0.0.1:{}/", server.port),
        ];
        for url in mismatched {
            let config = RedisConfig::new(url.clone()).connect_timeout(Duration::from_secs(2));
            let error = within(
                "a mismatched connection",
                EventBus::builder().redis_pubsub(config),
            )
            .await
            .expect_err("no common protocol");
            assert!(error.is_unavailable(), "{url}: {error}");
            assert!(
                error.to_string().contains("cannot connect"),
                "{url}: {error}"
            );
        }
    }
}
