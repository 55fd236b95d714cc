//! Webhooks through the real binary: `trainyard serve` following a repository by URL (so no
//! file watcher sees its commits) and polling once an hour, so that only a signed push
//! delivery can make it apply a new commit at once; unsigned and replayed deliveries change
//! nothing.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use trainyard::store::{FOLLOWED_CURSOR, Store};
use trainyard_tests::{DataDir, Repo, Result, TestResult, free_port, http_get, wait_for};

const SECRET: &str = "e2e webhook secret";

/// `trainyard serve` killed when dropped, so a failing test leaves no service behind.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(url: &str, data: &DataDir, port: u16, secret_file: &Path) -> Result<Serving> {
    let log = std::fs::File::create(data.path().join("service.log"))?;
    let child = Command::new(trainyard_tests::trainyard_bin()?)
        .current_dir(data.path())
        .args(["serve", "--repo", url, "--data-dir"])
        .arg(data.path())
        .arg("--database")
        .arg(data.database())
        .args(["--poll-seconds", "3600", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--webhook-secret-file")
        .arg(secret_file)
        .args(["--webhook-repo", "octo/ml"])
        .env_remove("TRAINYARD_WEBHOOK_SECRET")
        .env_remove("TRAINYARD_POLICY_CONFIG")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    Ok(Serving(child))
}

/// POSTs a delivery to /webhooks/github; the status code and the body.
fn deliver(
    port: u16,
    event: &str,
    delivery: &str,
    signature: Option<&str>,
    body: &[u8],
) -> Result<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let signature = signature
        .map(|s| format!("X-Hub-Signature-256: {s}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "POST /webhooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nX-GitHub-Event: {event}\r\n\
         X-GitHub-Delivery: {delivery}\r\n{signature}\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

async fn applied(store: &Store) -> Result<Option<String>> {
    Ok(store.cursor(FOLLOWED_CURSOR).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_push_is_applied_at_once_and_forged_or_replayed_ones_do_nothing() -> TestResult {
    let source = Repo::new()?;
    source.write("README.md", "one\n")?;
    let first = source.commit("first")?.to_string();
    let data = DataDir::new()?;
    let store = data.store().await?;
    let secret_file = data.path().join("webhook-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n"))?;
    let port = free_port()?;
    let url = format!("file://{}", source.path().display());
    let _service = serve(&url, &data, port, &secret_file)?;
    let log = || std::fs::read_to_string(data.path().join("service.log")).unwrap_or_default();

    wait_for(
        Duration::from_secs(60),
        "the first commit applied",
        async || {
            Ok(
                http_get(port, "/healthz").is_ok_and(|(code, _)| code == 200)
                    && applied(&store).await?.as_deref() == Some(first.as_str()),
            )
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", log()))?;

    source.write("README.md", "two\n")?;
    let second = source.commit("second")?.to_string();
    let body = serde_json::to_vec(&serde_json::json!({
        "ref": "refs/heads/main",
        "before": first,
        "after": second,
        "deleted": false,
        "repository": {"full_name": "octo/ml"},
        "sender": {"login": "octocat", "type": "User"}
    }))?;

    let (code, text) = deliver(port, "push", "d-1", None, &body)?;
    assert_eq!(code, 401, "{text}");
    let forged = trainyard::server::webhooks::sign(b"not the secret", &body);
    let (code, text) = deliver(port, "push", "d-1", Some(&forged), &body)?;
    assert_eq!(code, 401, "{text}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        applied(&store).await?.as_deref(),
        Some(first.as_str()),
        "refused deliveries make it look at nothing"
    );
    assert!(
        store
            .pending_forge_events::<trainyard::report::ForgeEvent>(10)
            .await?
            .is_empty()
    );

    let signature = trainyard::server::webhooks::sign(SECRET.as_bytes(), &body);
    let (code, text) = deliver(port, "push", "d-1", Some(&signature), &body)?;
    assert_eq!((code, text.as_str()), (202, "queued\n"));
    wait_for(
        Duration::from_secs(20),
        "the pushed commit applied",
        async || Ok(applied(&store).await?.as_deref() == Some(second.as_str())),
    )
    .await
    .map_err(|e| format!("{e}\n{}", log()))?;

    let (code, text) = deliver(port, "push", "d-1", Some(&signature), &body)?;
    assert_eq!((code, text.as_str()), (200, "duplicate delivery\n"));
    let ping = br#"{"zen": "Practicality beats purity."}"#;
    let signature = trainyard::server::webhooks::sign(SECRET.as_bytes(), ping);
    assert_eq!(
        deliver(port, "ping", "d-2", Some(&signature), ping)?,
        (200, "pong\n".to_owned())
    );
    assert!(
        store
            .pending_forge_events::<trainyard::report::ForgeEvent>(10)
            .await?
            .is_empty()
    );
    Ok(())
}
