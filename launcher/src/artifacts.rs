//! The artifact store: step outputs, inputs, logs, launch manifests and uploaded step sources
//! kept under keys in an object store (a local directory by default, or S3), each stored file
//! measured and hashed on the way in.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt as _;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::buffered::{BufReader, BufWriter};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{Certificate, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How much of a file is read, hashed and handed to the store at a time.
const CHUNK: usize = 1024 * 1024;

/// Read size when copying an object to a file; larger than [`CHUNK`] because each refill is a
/// ranged request, which costs a round trip on remote stores.
const DOWNLOAD_BUFFER: usize = 8 * 1024 * 1024;

/// Schemes `object_store` knows, none of which this build compiles in; naming them gives a
/// better error than "unknown scheme".
const KNOWN_REMOTE_SCHEMES: &[&str] = &[
    "gs", "az", "adl", "azure", "abfs", "abfss", "http", "https", "memory",
];

/// What can go wrong storing or fetching artifacts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key is empty, absolute, climbs out with `..`, or uses characters keys may not have.
    #[error("invalid artifact key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The store location names a backend this build does not include.
    #[error(
        "artifact store {location:?}: the `{scheme}` backend is not compiled into this build; use a local directory or a file:// URL"
    )]
    UnsupportedScheme {
        /// The location as given.
        location: String,
        /// Its URL scheme.
        scheme: String,
    },
    /// The store location is not a usable directory path or URL.
    #[error("invalid artifact store location {location:?}: {reason}")]
    InvalidLocation {
        /// The location as given.
        location: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// No object is stored under the key.
    #[error("artifact {key:?} is not in the store")]
    NotFound {
        /// The key that was looked up.
        key: String,
    },
    /// A local file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// An object holds something other than what its key promises (a manifest that does
    /// not parse or does not match its job).
    #[error("artifact {key:?} is corrupt: {reason}")]
    Corrupt {
        /// The object's key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The object store failed.
    #[error("artifact {key:?}: {source}")]
    Store {
        /// The key being read or written.
        key: String,
        /// The underlying error.
        source: object_store::Error,
    },
}

/// Result of this module's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where an object was stored and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The object's address, such as `file:///data/artifacts/runs/42/train/model`.
    pub uri: String,
    /// Lowercase hex sha256 of the content.
    pub sha256: String,
    /// Content length in bytes.
    pub size: u64,
}

/// The key of a step's declared output: `<instance>/runs/<run>/<step>/<output>`. Scoped by
/// installation, so that installations sharing a store (whose run ids overlap) never read
/// or overwrite each other's outputs.
pub fn output_key(instance: &str, run: i64, step: &str, output: &str) -> String {
    format!("{instance}/runs/{run}/{step}/{output}")
}

/// The key of one attempt's combined log: `jobs/<job name>/log`. Job names carry the
/// installation, run, step and attempt (see `trainyard::execute::job_name`).
pub fn log_key(job: &str) -> String {
    format!("jobs/{job}/log")
}

/// The key of the manifest `trainyard-launch` writes, last, after storing a successful
/// attempt's outputs: `jobs/<job name>/manifest.json`.
pub fn manifest_key(job: &str) -> String {
    format!("jobs/{job}/manifest.json")
}

/// The key prefix of a source tree uploaded for steps that run away from the service:
/// `sources/<git tree oid>`. Content-addressed, so every run of the same tree shares it.
pub fn source_prefix(tree: &str) -> String {
    format!("sources/{tree}")
}

/// The key of the object written after every file under `prefix` is stored, so that a
/// half-finished upload is never taken for a whole one: `<prefix>.complete`.
pub fn source_marker_key(prefix: &str) -> String {
    format!("{prefix}.complete")
}

/// The key of the file at `path` (relative, `/`-separated bytes as Git stores them) in the
/// source tree under `prefix`.
///
/// Keys may hold only a few characters, while file names may hold any byte but `/` and NUL.
/// Every byte outside `[A-Za-z0-9.-]` is therefore written as `_` and two hex digits (`_`
/// itself as `_5F`), which [`source_path`] reverses exactly.
pub fn source_key(prefix: &str, path: &[u8]) -> String {
    let mut key = String::with_capacity(prefix.len() + 1 + path.len());
    key.push_str(prefix);
    key.push('/');
    for &byte in path {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'/') {
            key.push(char::from(byte));
        } else {
            key.push_str(&format!("_{byte:02X}"));
        }
    }
    key
}

/// The relative file path a key under `prefix` stands for (the reverse of [`source_key`]).
///
/// Refuses keys outside `prefix` and any that would leave the directory the tree is
/// written into: empty, `.` or `..` components, or an escaped `/` or NUL.
pub fn source_path(prefix: &str, key: &str) -> Result<PathBuf> {
    use std::os::unix::ffi::OsStringExt as _;
    let invalid = |reason| Error::InvalidKey {
        key: key.to_owned(),
        reason,
    };
    let relative = key
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or_else(|| invalid("it is not under the source prefix"))?;
    let mut path = PathBuf::new();
    for segment in relative.split('/') {
        let mut bytes = Vec::with_capacity(segment.len());
        let mut rest = segment.as_bytes();
        while let Some((&byte, tail)) = rest.split_first() {
            if byte == b'_' {
                let escaped = tail
                    .get(..2)
                    .and_then(|pair| std::str::from_utf8(pair).ok())
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                    .ok_or_else(|| invalid("a '_' is not followed by two hex digits"))?;
                if matches!(escaped, b'/' | 0) {
                    return Err(invalid("it escapes a path separator or NUL"));
                }
                bytes.push(escaped);
                rest = &tail[2..];
            } else {
                bytes.push(byte);
                rest = tail;
            }
        }
        if bytes.is_empty() || bytes == b"." || bytes == b".." {
            return Err(invalid("it has an empty or relative path component"));
        }
        path.push(std::ffi::OsString::from_vec(bytes));
    }
    Ok(path)
}

/// Checks that `key` is acceptable as an artifact key, so that callers can refuse bad keys
/// before work starts rather than when its results are stored.
pub fn check_key(key: &str) -> Result<()> {
    object_path(key).map(drop)
}

/// A handle on the object store that holds artifacts; cheap to clone.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    /// URI of the store's root, without a trailing slash.
    base_uri: String,
    /// The path or URL the store was opened with.
    location: String,
}

impl ArtifactStore {
    /// Opens the store at a directory path, a `file:///` URL (creating the directory) or an
    /// `s3://bucket/prefix` URL configured from the `AWS_*` environment variables, as the AWS
    /// tools read them: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ENDPOINT_URL` for an S3-compatible server, `AWS_ALLOW_HTTP=true` for a plain
    /// HTTP one.
    ///
    /// Other object store schemes are refused with [`Error::UnsupportedScheme`].
    pub fn open(url_or_path: &str) -> Result<Self> {
        Self::open_with_env(url_or_path, std::env::vars())
    }

    /// Like [`ArtifactStore::open`], with the `AWS_*` settings read from `vars` instead of
    /// this process's environment; variables without the `AWS_` prefix are ignored.
    pub fn open_with_env<K, V>(
        url_or_path: &str,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self>
    where
        K: AsRef<str>,
        V: Into<String>,
    {
        let directory = match url_or_path.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("file") => {
                file_url_path(url_or_path, rest)?
            }
            Some((scheme, rest))
                if scheme.eq_ignore_ascii_case("s3") || scheme.eq_ignore_ascii_case("s3a") =>
            {
                return open_s3(url_or_path, rest, vars);
            }
            Some((scheme, _)) if is_scheme(scheme) => {
                let scheme = scheme.to_ascii_lowercase();
                if KNOWN_REMOTE_SCHEMES.contains(&scheme.as_str()) {
                    return Err(Error::UnsupportedScheme {
                        location: url_or_path.to_owned(),
                        scheme,
                    });
                }
                return Err(Error::InvalidLocation {
                    location: url_or_path.to_owned(),
                    reason: format!("unknown scheme `{scheme}`"),
                });
            }
            _ => PathBuf::from(url_or_path),
        };
        if directory.as_os_str().is_empty() {
            return Err(Error::InvalidLocation {
                location: url_or_path.to_owned(),
                reason: "empty path".to_owned(),
            });
        }
        std::fs::create_dir_all(&directory).map_err(|source| Error::Io {
            path: directory.clone(),
            source,
        })?;
        let root = std::fs::canonicalize(&directory).map_err(|source| Error::Io {
            path: directory.clone(),
            source,
        })?;
        let store =
            LocalFileSystem::new_with_prefix(&root).map_err(|source| Error::InvalidLocation {
                location: url_or_path.to_owned(),
                reason: source.to_string(),
            })?;
        let root_text = root.to_str().ok_or_else(|| Error::InvalidLocation {
            location: url_or_path.to_owned(),
            reason: "the directory's path is not valid UTF-8".to_owned(),
        })?;
        Ok(Self {
            store: Arc::new(store),
            base_uri: format!(
                "file://{}",
                percent_encode_path(root_text.trim_end_matches('/'))
            ),
            location: url_or_path.to_owned(),
        })
    }

    /// The path or URL this store was opened with, for handing to another process (such as
    /// `trainyard-launch` in a pod) that opens the same store.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The address an object under `key` has (or would have) in this store.
    pub fn uri(&self, key: &str) -> String {
        format!("{}/{key}", self.base_uri)
    }

    /// The key of the object at `uri` when it is in this store (the inverse of [`uri`]).
    ///
    /// [`uri`]: ArtifactStore::uri
    pub fn key_of<'u>(&self, uri: &'u str) -> Option<&'u str> {
        uri.strip_prefix(self.base_uri.as_str())?
            .strip_prefix('/')
            .filter(|key| !key.is_empty())
    }

    /// The keys of every object under the key prefix `prefix` (whole path components only:
    /// `sources/a` holds `sources/a/x`, not `sources/ab`), sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let location = object_path(prefix)?;
        let mut keys: Vec<String> = self
            .store
            .list(Some(&location))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .map_err(|source| store_error(prefix, source))?;
        keys.sort_unstable();
        Ok(keys)
    }

    /// Whether an object is stored under `key`.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        let location = object_path(key)?;
        match self.store.head(&location).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(store_error(key, source)),
        }
    }

    /// Stores the file at `path` under `key`, streaming it in chunks so that files larger than
    /// memory can be stored, and hashing it on the way.
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<Stored> {
        let location = object_path(key)?;
        let io_error = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(io_error)?;
        let mut writer = BufWriter::new(Arc::clone(&self.store), location);
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut buffer = vec![0u8; CHUNK];
        let copied: Result<()> = async {
            loop {
                let read = file.read(&mut buffer).await.map_err(io_error)?;
                if read == 0 {
                    break;
                }
                let chunk = &buffer[..read];
                hasher.update(chunk);
                size += read as u64;
                writer
                    .write_all(chunk)
                    .await
                    .map_err(|source| write_error(key, source))?;
            }
            writer
                .shutdown()
                .await
                .map_err(|source| write_error(key, source))
        }
        .await;
        if let Err(error) = copied {
            // A half-written multipart upload would otherwise linger in remote stores.
            if let Err(abort) = writer.abort().await {
                tracing::warn!(key, error = %abort, "could not abort a failed upload");
            }
            return Err(error);
        }
        Ok(Stored {
            uri: self.uri(key),
            sha256: hex(&hasher.finalize()),
            size,
        })
    }

    /// Stores `bytes` under `key`.
    pub async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<Stored> {
        let location = object_path(key)?;
        let sha256 = hex(&Sha256::digest(&bytes));
        let size = bytes.len() as u64;
        self.store
            .put(&location, PutPayload::from(bytes))
            .await
            .map_err(|source| store_error(key, source))?;
        Ok(Stored {
            uri: self.uri(key),
            sha256,
            size,
        })
    }

    /// The content stored under `key`, or `None` if there is none.
    pub async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let location = object_path(key)?;
        let result = match self.store.get(&location).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(store_error(key, source)),
        };
        let bytes = result
            .bytes()
            .await
            .map_err(|source| store_error(key, source))?;
        Ok(Some(bytes.to_vec()))
    }

    /// Copies the object under `key` to the file at `path`, creating parent directories.
    ///
    /// The content is written beside `path` first and renamed into place, so a failed copy
    /// never leaves a truncated file where a step expects a complete one.
    pub async fn get_to_file(&self, key: &str, path: &Path) -> Result<()> {
        let location = object_path(key)?;
        let meta = self
            .store
            .head(&location)
            .await
            .map_err(|source| store_error(key, source))?;
        let io_error = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { path, source }
        };
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(io_error(parent))?;
        }
        let partial = partial_path(path);
        let mut reader = BufReader::with_capacity(Arc::clone(&self.store), &meta, DOWNLOAD_BUFFER);
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(io_error(&partial))?;
        let copied = async {
            tokio::io::copy_buf(&mut reader, &mut file).await?;
            file.flush().await
        }
        .await;
        if let Err(source) = copied {
            // The partial file is useless; failing to remove it must not hide the real error.
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(Error::Io {
                path: path.to_owned(),
                source,
            });
        }
        drop(file);
        tokio::fs::rename(&partial, path)
            .await
            .map_err(io_error(path))
    }
}

/// An S3 bucket (and optional key prefix) from `s3://bucket/prefix`, configured from the
/// `AWS_*` variables in `vars` the way `AmazonS3Builder::from_env` reads the environment.
fn open_s3<K, V>(
    location: &str,
    after_scheme: &str,
    vars: impl IntoIterator<Item = (K, V)>,
) -> Result<ArtifactStore>
where
    K: AsRef<str>,
    V: Into<String>,
{
    let invalid = |reason: String| Error::InvalidLocation {
        location: location.to_owned(),
        reason,
    };
    let (bucket, prefix) = after_scheme.split_once('/').unwrap_or((after_scheme, ""));
    let prefix = prefix.trim_end_matches('/');
    if bucket.is_empty() {
        return Err(invalid(
            "an S3 URL needs a bucket, such as s3://bucket/prefix".to_owned(),
        ));
    }
    // Before the variables: they may set client options (AWS_ALLOW_HTTP), which replacing
    // the options afterwards would drop.
    let options = client_options()
        .map_err(|error| invalid(format!("cannot load the root certificates: {error}")))?;
    let mut builder = AmazonS3Builder::new().with_client_options(options);
    for (key, value) in vars {
        let key = key.as_ref();
        if !key.starts_with("AWS_") {
            continue;
        }
        // Variables object_store does not know (AWS_PROFILE, ...) are for other tools.
        if let Ok(config) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
            builder = builder.with_config(config, value);
        }
    }
    let s3 = builder
        .with_bucket_name(bucket)
        .build()
        .map_err(|error| invalid(error.to_string()))?;
    let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
        Arc::new(s3)
    } else {
        let prefix = object_path(prefix)
            .map_err(|error| invalid(format!("the key prefix is not usable: {error}")))?;
        Arc::new(PrefixStore::new(s3, prefix))
    };
    let base_uri = if prefix.is_empty() {
        format!("s3://{bucket}")
    } else {
        format!("s3://{bucket}/{prefix}")
    };
    Ok(ArtifactStore {
        store,
        base_uri,
        location: location.to_owned(),
    })
}

/// The HTTP client's options: Mozilla's root certificates on top of the system's. A minimal
/// step image has no CA bundle, and without any roots the TLS client cannot even be built
/// (for an `http://` endpoint too); an image's own roots, or `SSL_CERT_FILE`, still count.
fn client_options() -> object_store::Result<ClientOptions> {
    webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().try_fold(
        ClientOptions::new(),
        |options, der| {
            Certificate::from_der(der).map(|certificate| options.with_root_certificate(certificate))
        },
    )
}

/// BufWriter reports store failures as `io::Error`; this keeps them attributed to the key.
fn write_error(key: &str, source: io::Error) -> Error {
    Error::Store {
        key: key.to_owned(),
        source: object_store::Error::Generic {
            store: "artifact store",
            source: Box::new(source),
        },
    }
}

fn store_error(key: &str, source: object_store::Error) -> Error {
    match source {
        object_store::Error::NotFound { .. } => Error::NotFound {
            key: key.to_owned(),
        },
        source => Error::Store {
            key: key.to_owned(),
            source,
        },
    }
}

/// Checks a key and turns it into an object path. Keys are built from run ids, step and
/// output names, so anything outside a conservative alphabet is a bug or an attack.
fn object_path(key: &str) -> Result<ObjectPath> {
    let invalid = |reason| Error::InvalidKey {
        key: key.to_owned(),
        reason,
    };
    if key.is_empty() {
        return Err(invalid("it is empty"));
    }
    if key.starts_with('/') {
        return Err(invalid("it is absolute"));
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    {
        return Err(invalid(
            "keys may only contain ASCII letters, digits, '-', '_', '.' and '/'",
        ));
    }
    for segment in key.split('/') {
        match segment {
            "" => return Err(invalid("it has an empty path component")),
            "." | ".." => return Err(invalid("it has a relative path component")),
            _ => {}
        }
    }
    ObjectPath::parse(key).map_err(|_| invalid("the object store rejects it"))
}

fn is_scheme(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// The directory named by a `file://` URL: an empty or `localhost` host, an absolute path,
/// percent-escapes decoded.
fn file_url_path(location: &str, after_scheme: &str) -> Result<PathBuf> {
    let invalid = |reason: &str| Error::InvalidLocation {
        location: location.to_owned(),
        reason: reason.to_owned(),
    };
    let path = after_scheme
        .strip_prefix("localhost")
        .unwrap_or(after_scheme);
    if !path.starts_with('/') {
        return Err(invalid(
            "a file URL needs an absolute path, such as file:///var/lib/trainyard/artifacts",
        ));
    }
    let mut bytes = Vec::with_capacity(path.len());
    let mut rest = path.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let escaped = tail
                .get(..2)
                .and_then(|pair| std::str::from_utf8(pair).ok())
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| invalid("a '%' in the URL is not followed by two hex digits"))?;
            bytes.push(escaped);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    let decoded =
        String::from_utf8(bytes).map_err(|_| invalid("the decoded path is not valid UTF-8"))?;
    Ok(PathBuf::from(decoded))
}

/// Escapes what may not appear literally in a URL path (RFC 3986 `pchar`, plus `/`).
fn percent_encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// Lowercase hex of `bytes`, as sha256 digests are written.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn sha256_hex(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    /// Larger than the writer's in-memory buffer, so the multipart path is the one exercised.
    fn large_content() -> Vec<u8> {
        (0..(12 * 1024 * 1024 + 17))
            .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect()
    }

    /// Put a large file, read it back to a file and as bytes: same content, hash and size.
    async fn a_stored_file_comes_back_intact(store: &ArtifactStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let content = large_content();
        let source = dir.path().join("model.bin");
        std::fs::write(&source, &content).expect("write source");

        let key = output_key("test", 42, "train", "model");
        let stored = store.put_file(&key, &source).await.expect("put file");
        assert_eq!(stored.size, content.len() as u64);
        assert_eq!(stored.sha256, sha256_hex(&content));
        assert_eq!(stored.uri, store.uri(&key));

        let copy = dir.path().join("fetched/deeper/model.bin");
        store.get_to_file(&key, &copy).await.expect("get to file");
        assert_eq!(std::fs::read(&copy).expect("read copy"), content);
        assert!(!partial_path(&copy).exists(), "no partial file is left");
        assert_eq!(
            store.get_bytes(&key).await.expect("get bytes"),
            Some(content)
        );
        assert!(store.exists(&key).await.expect("exists"));
    }

    #[tokio::test]
    async fn a_stored_file_comes_back_with_the_same_bytes_hash_and_size() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = ArtifactStore::open(dir.path().join("store").to_str().expect("utf-8"))
            .expect("open store");
        a_stored_file_comes_back_intact(&store).await;
    }

    #[test]
    fn a_uri_gives_back_its_key_only_in_its_own_store() {
        let dir = tempfile::tempdir().expect("temp dir");
        let open = |name: &str| {
            ArtifactStore::open(dir.path().join(name).to_str().expect("utf-8")).expect("open")
        };
        let (store, other) = (open("with space"), open("with"));
        let key = output_key("test", 42, "train", "model");
        assert_eq!(store.key_of(&store.uri(&key)), Some(key.as_str()));
        assert_eq!(other.key_of(&store.uri(&key)), None);
        assert_eq!(store.key_of(&other.uri(&key)), None);
        assert_eq!(store.key_of(&store.uri("")), None);
    }

    #[tokio::test]
    async fn the_uri_points_at_the_stored_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("with space");
        let store = ArtifactStore::open(root.to_str().expect("utf-8")).expect("open store");
        let stored = store
            .put_bytes("runs/1/s/out", b"hello".to_vec())
            .await
            .expect("put bytes");
        assert_eq!(stored.sha256, sha256_hex(b"hello"));
        assert_eq!(stored.size, 5);
        let expected_root = std::fs::canonicalize(&root).expect("canonical root");
        let expected = format!(
            "file://{}/runs/1/s/out",
            expected_root.to_str().expect("utf-8").replace(' ', "%20")
        );
        assert_eq!(stored.uri, expected);
        let on_disk = file_url_path(&stored.uri, &stored.uri["file://".len()..]).expect("path");
        assert_eq!(std::fs::read(on_disk).expect("read stored file"), b"hello");
    }

    #[tokio::test]
    async fn a_file_url_opens_the_same_directory_as_its_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("a b");
        let by_path = ArtifactStore::open(root.to_str().expect("utf-8")).expect("open by path");
        by_path
            .put_bytes("k", b"same".to_vec())
            .await
            .expect("put bytes");
        let url = format!(
            "file://{}",
            root.to_str().expect("utf-8").replace(' ', "%20")
        );
        let by_url = ArtifactStore::open(&url).expect("open by url");
        assert_eq!(
            by_url.get_bytes("k").await.expect("get"),
            Some(b"same".to_vec())
        );
    }

    async fn a_missing_key_reads_as_none(store: &ArtifactStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(store.get_bytes("runs/1/a/b").await.expect("get"), None);
        assert!(!store.exists("runs/1/a/b").await.expect("exists"));
        let target = dir.path().join("x");
        let error = store
            .get_to_file("runs/1/a/b", &target)
            .await
            .expect_err("missing key");
        assert!(
            matches!(&error, Error::NotFound { key } if key == "runs/1/a/b"),
            "{error}"
        );
        assert!(!target.exists());
    }

    #[tokio::test]
    async fn a_missing_key_reads_as_none_and_cannot_be_fetched_to_a_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = ArtifactStore::open(dir.path().to_str().expect("utf-8")).expect("open");
        a_missing_key_reads_as_none(&store).await;
    }

    /// Listing finds every key under a prefix, by whole path components, and nothing else.
    async fn listing_finds_whole_components_under_the_prefix(store: &ArtifactStore) {
        for key in [
            "sources/abc/a.py",
            "sources/abc/sub/b.py",
            "sources/abc.complete",
            "sources/abcd/c.py",
            "runs/1/s/out",
        ] {
            store.put_bytes(key, b"x".to_vec()).await.expect("put");
        }
        assert_eq!(
            store.list("sources/abc").await.expect("list"),
            vec!["sources/abc/a.py", "sources/abc/sub/b.py"]
        );
        assert_eq!(
            store.list("nothing/here").await.expect("list"),
            Vec::<String>::new()
        );
        let error = store.list("../x").await.expect_err("invalid prefix");
        assert!(matches!(error, Error::InvalidKey { .. }), "{error}");
    }

    #[tokio::test]
    async fn listing_a_directory_store_finds_whole_components_under_the_prefix() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = ArtifactStore::open(dir.path().to_str().expect("utf-8")).expect("open");
        listing_finds_whole_components_under_the_prefix(&store).await;
    }

    mod s3 {
        use trainyard_testkit::s3::S3Server;

        use super::*;

        fn open(server: &S3Server, url: &str) -> ArtifactStore {
            let _ = rustls::crypto::ring::default_provider().install_default();
            ArtifactStore::open_with_env(url, server.env()).expect("open S3 store")
        }

        #[tokio::test]
        async fn an_s3_store_keeps_files_intact_and_reports_missing_keys() {
            let server = S3Server::start().expect("S3 server");
            let store = open(&server, &format!("{}/artifacts", server.url()));
            a_stored_file_comes_back_intact(&store).await;
            a_missing_key_reads_as_none(&store).await;
            listing_finds_whole_components_under_the_prefix(&store).await;
        }

        #[tokio::test]
        async fn an_s3_uri_names_bucket_prefix_and_key_and_the_store_keeps_its_url() {
            let server = S3Server::start().expect("S3 server");
            let url = format!("{}/team-a/artifacts/", server.url());
            let store = open(&server, &url);
            let stored = store
                .put_bytes("runs/1/s/out", b"hello".to_vec())
                .await
                .expect("put");
            assert_eq!(
                stored.uri,
                format!("{}/team-a/artifacts/runs/1/s/out", server.url())
            );
            assert_eq!(stored.sha256, sha256_hex(b"hello"));
            assert_eq!(store.location(), url);
            let whole_bucket = open(&server, &server.url());
            assert_eq!(
                whole_bucket
                    .get_bytes("team-a/artifacts/runs/1/s/out")
                    .await
                    .expect("get"),
                Some(b"hello".to_vec()),
                "the prefix is applied to every key"
            );
        }

        #[tokio::test]
        async fn stores_under_different_prefixes_do_not_see_each_others_keys() {
            let server = S3Server::start().expect("S3 server");
            let a = open(&server, &format!("{}/a", server.url()));
            let b = open(&server, &format!("{}/b", server.url()));
            a.put_bytes("runs/1/s/out", b"from a".to_vec())
                .await
                .expect("put");
            assert_eq!(b.get_bytes("runs/1/s/out").await.expect("get"), None);
            assert_eq!(b.list("runs").await.expect("list"), Vec::<String>::new());
            assert_eq!(a.list("runs").await.expect("list"), vec!["runs/1/s/out"]);
        }

        #[test]
        fn an_s3_url_without_a_bucket_is_refused() {
            let error = ArtifactStore::open_with_env("s3:///x", [("AWS_REGION", "us-east-1")])
                .expect_err("no bucket");
            assert!(matches!(error, Error::InvalidLocation { .. }), "{error}");
        }
    }

    #[tokio::test]
    async fn keys_that_escape_the_store_are_rejected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = ArtifactStore::open(dir.path().to_str().expect("utf-8")).expect("open");
        for key in [
            "",
            "/etc/passwd",
            "../outside",
            "runs/../../outside",
            "runs/./x",
            "runs//x",
            "runs/x\\..\\y",
            "runs/ü",
        ] {
            let error = store
                .put_bytes(key, b"x".to_vec())
                .await
                .expect_err("invalid key");
            assert!(
                matches!(error, Error::InvalidKey { .. }),
                "{key:?}: {error}"
            );
        }
        let parent = dir.path().parent().expect("temp dir has a parent");
        assert!(!parent.join("outside").exists());
    }

    #[test]
    fn a_backend_that_is_not_compiled_in_is_named_in_the_error() {
        let error = ArtifactStore::open("gs://bucket/prefix").expect_err("gs is not compiled in");
        assert!(
            matches!(&error, Error::UnsupportedScheme { scheme, .. } if scheme == "gs"),
            "{error}"
        );
        assert!(error.to_string().contains("`gs` backend"), "{error}");
        let error = ArtifactStore::open("ftp://host/x").expect_err("unknown scheme");
        assert!(matches!(error, Error::InvalidLocation { .. }), "{error}");
        let error = ArtifactStore::open("file://host/x").expect_err("remote file host");
        assert!(matches!(error, Error::InvalidLocation { .. }), "{error}");
    }

    #[test]
    fn opening_a_path_creates_the_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("a/b/c");
        ArtifactStore::open(root.to_str().expect("utf-8")).expect("open");
        assert!(root.is_dir());
    }

    #[test]
    fn source_keys_hold_any_file_name_and_read_back_as_the_same_path() {
        use std::os::unix::ffi::OsStrExt as _;
        let prefix = source_prefix("abc123");
        for path in [
            &b"train.py"[..],
            b"pipelines/churn/train_model.py",
            b"with space/and (parens)/\xc3\xbc.txt",
            b"odd/_5F/%41",
            b".hidden/..dots",
            b"\xff\xfe",
        ] {
            let key = source_key(&prefix, path);
            check_key(&key).unwrap_or_else(|e| panic!("{key}: {e}"));
            let back = source_path(&prefix, &key).expect("decodes");
            assert_eq!(back.as_os_str().as_bytes(), path, "{key}");
        }
        assert_eq!(
            source_key(&prefix, b"a b/c_d.py"),
            "sources/abc123/a_20b/c_5Fd.py"
        );
    }

    #[test]
    fn source_keys_that_would_leave_the_source_directory_are_refused() {
        let prefix = source_prefix("abc123");
        for key in [
            "sources/abc123/../x",
            "sources/abc123/a/./b",
            "sources/abc123/a//b",
            "sources/abc123/",
            "sources/abc123/_2E_2E/etc",
            "sources/abc123/a_2Fb",
            "sources/abc123/nul_00",
            "sources/abc123/bad_zz",
            "sources/other/x",
            "sources/abc1234/x",
        ] {
            let error = source_path(&prefix, key).expect_err(key);
            assert!(matches!(error, Error::InvalidKey { .. }), "{key}: {error}");
        }
    }

    #[test]
    fn keys_are_scoped_by_installation_run_and_step_or_by_job() {
        assert_eq!(
            output_key("prod", 42, "train", "model"),
            "prod/runs/42/train/model"
        );
        assert_ne!(
            output_key("prod", 42, "train", "model"),
            output_key("staging", 42, "train", "model")
        );
        assert_eq!(log_key("ty-prod-42-train-2"), "jobs/ty-prod-42-train-2/log");
        assert_eq!(
            manifest_key("ty-prod-42-train-2"),
            "jobs/ty-prod-42-train-2/manifest.json"
        );
        assert!(object_path(&output_key("prod", 42, "train", "model")).is_ok());
        assert!(object_path(&log_key("ty-prod-42-train-2")).is_ok());
        assert!(object_path(&manifest_key("ty-prod-42-train-2")).is_ok());
    }
}
