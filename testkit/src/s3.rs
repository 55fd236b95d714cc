//! A real S3-protocol server for tests: moto's server mode, started on a free local port with
//! one empty bucket, stopped when the handle is dropped.
//!
//! moto comes from PyPI (`pip install 'moto[server]'`); when it is missing, [`S3Server::start`]
//! fails and says so instead of letting tests pass without S3.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The command that installs the server.
pub const INSTALL: &str = "pip install 'moto[server]'";

/// The bucket every server starts with.
pub const BUCKET: &str = "trainyard-test";

/// How long the server may take to answer after it was started.
const STARTUP: Duration = Duration::from_secs(30);

/// A running S3 server with one bucket, [`BUCKET`]. Dropping it stops the server.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    address: SocketAddr,
    /// moto's request log (its standard error), one line per request.
    log: LogFile,
}

/// One request the server answered, from its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Request {
    /// GET, PUT, HEAD, POST, DELETE.
    pub method: String,
    /// The path with its query, such as `/trainyard-test/jobs/x/manifest.json`.
    pub path: String,
    /// The status answered.
    pub status: u16,
}

/// A file in the system's temporary directory, removed on drop.
#[derive(Debug)]
struct LogFile(std::path::PathBuf);

impl Drop for LogFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl S3Server {
    /// Starts a server, waits until it answers, and creates the bucket.
    pub fn start() -> io::Result<Self> {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
        let probe = Command::new(&python)
            .args(["-c", "import moto.server, flask_cors"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !probe.is_ok_and(|status| status.success()) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "the tests need moto's S3 server under {python}; install it with: {INSTALL}"
                ),
            ));
        }
        // Another process may take the port between the probe and moto's bind; then moto
        // exits and another port is tried.
        let mut last_error = None;
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let log = LogFile(
                std::env::temp_dir()
                    .join(format!("trainyard-moto-{}-{port}.log", std::process::id())),
            );
            let child = Command::new(&python)
                .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
                .arg(port.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log.0)?)
                .spawn()?;
            let mut server = S3Server {
                child,
                address: SocketAddr::from(([127, 0, 0, 1], port)),
                log,
            };
            match server.wait_until_ready() {
                Ok(()) => {
                    server.create_bucket()?;
                    return Ok(server);
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("the S3 server did not start")))
    }

    /// `http://127.0.0.1:PORT`, the server's endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// `s3://trainyard-test`, the bucket's URL.
    pub fn url(&self) -> String {
        format!("s3://{BUCKET}")
    }

    /// The environment an S3 client needs to reach this server: credentials, region, the
    /// endpoint, and permission to use plain HTTP.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
    }

    /// Every request answered so far, in order (moto logs each once it has answered it).
    pub fn requests(&self) -> Vec<S3Request> {
        let text = std::fs::read_to_string(&self.log.0).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                // 127.0.0.1 - - [02/Dec/2026 12:34:06] "GET /bucket/key HTTP/1.1" 404 -
                let (_, rest) = line.split_once('"')?;
                let (request, after) = rest.split_once('"')?;
                let mut parts = request.split(' ');
                let method = parts.next()?.to_owned();
                let path = parts.next()?.to_owned();
                let status = after.split_whitespace().next()?.parse().ok()?;
                Some(S3Request {
                    method,
                    path,
                    status,
                })
            })
            .collect()
    }

    fn wait_until_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "the S3 server exited at start ({status})"
                )));
            }
            if let Ok(status) = self.request("GET", "/")
                && status == 200
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the S3 server did not answer within {STARTUP:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn create_bucket(&self) -> io::Result<()> {
        match self.request("PUT", &format!("/{BUCKET}"))? {
            200 => Ok(()),
            status => Err(io::Error::other(format!(
                "creating bucket {BUCKET} answered {status}"
            ))),
        }
    }

    /// Sends one bodiless request and returns the response's status code. moto does not
    /// check signatures, so setting the server up needs no S3 client.
    fn request(&self, method: &str, path: &str) -> io::Result<u16> {
        let mut stream = TcpStream::connect_timeout(&self.address, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.address
        )?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let text = String::from_utf8_lossy(&response);
        text.split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| io::Error::other(format!("not an HTTP response: {text:.80}")))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // Already exited is fine; the wait reaps it either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_answers_with_its_bucket_and_stops_on_drop() {
        let server = S3Server::start().expect("S3 server");
        let address = server.address;
        assert_eq!(
            server.request("HEAD", &format!("/{BUCKET}")).expect("head"),
            200
        );
        assert_eq!(
            server.request("HEAD", "/no-such-bucket").expect("head"),
            404
        );
        let requests = server.requests();
        assert!(
            requests.contains(&S3Request {
                method: "HEAD".to_owned(),
                path: "/no-such-bucket".to_owned(),
                status: 404
            }),
            "{requests:?}"
        );
        drop(server);
        assert!(TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_err());
    }
}
