//! What the checker keeps in the data directory so a restarted service does not parse and
//! evaluate again what it evaluated before: parsed files by Git blob id, and policy verdicts
//! by their cache key (which names the rules, settings and document versions they came from).
//!
//! Two append-only files of JSON lines, `parsed.jsonl` and `verdicts.jsonl`, each opened by a
//! header naming the binary that wrote it: a different binary may parse or judge differently,
//! so it starts them afresh. Only a cache: a line that does not read (a write cut short by a
//! crash) is skipped, a file that cannot be written is logged and left alone, and nothing a
//! service decides depends on what is in them. When more than half the lines are stale, the
//! next save writes the live entries to a new file and renames it over the old one.
//!
//! A hand-written format rather than a key-value crate: the entries are read once at start
//! and then only appended, which JSON lines do in a few lines of code with the serde types
//! the documents already have.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use git2::Oid;
use serde::{Deserialize, Serialize};
use trainyard_policies::Violation;

use crate::spec::{Document, Finding, ParsedDocument, ParsedFile, Pipeline, Schedule};

/// Bumped whenever what is stored changes shape or meaning.
const FORMAT: u32 = 2;
const PARSED: &str = "parsed.jsonl";
const VERDICTS: &str = "verdicts.jsonl";
/// Stale lines tolerated before a file is rewritten, besides as many as are live.
const SLACK: usize = 256;

/// The first line of each file.
#[derive(Serialize, Deserialize)]
struct Header {
    identity: String,
}

#[derive(Serialize)]
struct ParsedLineRef<'a> {
    blob: String,
    documents: Vec<DocumentRef<'a>>,
    findings: &'a [Finding],
}

/// A document of a parsed file: exactly one of `pipeline` and `schedule` is set. Plain
/// optional fields rather than a tagged enum, which serde would buffer before reading.
#[derive(Serialize)]
struct DocumentRef<'a> {
    line: u32,
    version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pipeline: Option<&'a Pipeline>,
    #[serde(skip_serializing_if = "Option::is_none")]
    schedule: Option<&'a Schedule>,
}

#[derive(Deserialize)]
struct ParsedLine {
    blob: String,
    documents: Vec<StoredDocument>,
    findings: Vec<Finding>,
}

#[derive(Deserialize)]
struct StoredDocument {
    line: u32,
    version: String,
    #[serde(default)]
    pipeline: Option<Pipeline>,
    #[serde(default)]
    schedule: Option<Schedule>,
}

#[derive(Serialize, Deserialize)]
struct VerdictLine<V> {
    key: String,
    violations: V,
}

/// What a cache held when it was opened.
#[derive(Default)]
pub struct Loaded {
    /// Parsed files by blob.
    pub parsed: HashMap<Oid, Arc<ParsedFile>>,
    /// Violations by verdict cache key.
    pub verdicts: HashMap<String, Arc<[Violation]>>,
}

/// The two files of a cache directory, open for appending.
pub struct DiskCache {
    identity: String,
    parsed: Appender,
    verdicts: Appender,
}

/// One file: its lines so far (with the header), and the handle new lines go to.
struct Appender {
    path: PathBuf,
    lines: usize,
    file: Option<BufWriter<File>>,
}

impl DiskCache {
    /// Opens the cache in `dir` (created if missing) for a binary of `identity`, with what it
    /// holds. Never fails: a cache that cannot be read is an empty one, and one that cannot
    /// be written is one that forgets.
    pub fn open(dir: &Path, identity: &str) -> (DiskCache, Loaded) {
        if let Err(error) = std::fs::create_dir_all(dir) {
            tracing::warn!(dir = %dir.display(), %error, "cannot create the definitions cache");
        }
        let mut loaded = Loaded::default();
        let parsed_lines = read_lines(&dir.join(PARSED), identity, |line: ParsedLine| {
            let blob = Oid::from_str(&line.blob).ok()?;
            loaded.parsed.insert(blob, Arc::new(line.into_parsed()?));
            Some(())
        });
        let verdict_lines = read_lines(
            &dir.join(VERDICTS),
            identity,
            |line: VerdictLine<Vec<Violation>>| {
                loaded.verdicts.insert(line.key, line.violations.into());
                Some(())
            },
        );
        let cache = DiskCache {
            identity: identity.to_owned(),
            parsed: Appender::open(dir.join(PARSED), identity, parsed_lines),
            verdicts: Appender::open(dir.join(VERDICTS), identity, verdict_lines),
        };
        (cache, loaded)
    }

    /// Records `fresh` parsed files, or rewrites the file with `live` when most of it is stale.
    pub fn save_parsed<'a>(
        &mut self,
        fresh: &[(Oid, Arc<ParsedFile>)],
        live: impl ExactSizeIterator<Item = (&'a Oid, &'a Arc<ParsedFile>)>,
    ) {
        let line = |blob: &Oid, parsed: &ParsedFile| {
            serde_json::to_string(&ParsedLineRef::of(blob, parsed))
        };
        if self.parsed.stale(fresh.len(), live.len()) {
            self.parsed.rewrite(
                &self.identity,
                live.map(|(blob, parsed)| line(blob, parsed)),
            );
        } else {
            self.parsed
                .append(fresh.iter().map(|(blob, parsed)| line(blob, parsed)));
        }
    }

    /// Records `fresh` verdicts, or rewrites the file with `live` when most of it is stale.
    pub fn save_verdicts<'a>(
        &mut self,
        fresh: &[(String, Arc<[Violation]>)],
        live: impl ExactSizeIterator<Item = (&'a String, &'a Arc<[Violation]>)>,
    ) {
        let line = |key: &String, violations: &Arc<[Violation]>| {
            serde_json::to_string(&VerdictLine {
                key: key.clone(),
                violations: violations.as_ref(),
            })
        };
        if self.verdicts.stale(fresh.len(), live.len()) {
            self.verdicts
                .rewrite(&self.identity, live.map(|(key, v)| line(key, v)));
        } else {
            self.verdicts
                .append(fresh.iter().map(|(key, v)| line(key, v)));
        }
    }
}

impl<'a> ParsedLineRef<'a> {
    fn of(blob: &Oid, parsed: &'a ParsedFile) -> Self {
        ParsedLineRef {
            blob: blob.to_string(),
            documents: parsed
                .documents
                .iter()
                .map(|d| {
                    let (pipeline, schedule) = match &d.document {
                        Document::Pipeline(p) => (Some(p.as_ref()), None),
                        Document::Schedule(s) => (None, Some(s.as_ref())),
                    };
                    DocumentRef {
                        line: d.line,
                        version: &d.version,
                        pipeline,
                        schedule,
                    }
                })
                .collect(),
            findings: &parsed.findings,
        }
    }
}

impl ParsedLine {
    /// The parsed file, or `None` when a document holds neither kind (a damaged line).
    fn into_parsed(self) -> Option<ParsedFile> {
        let mut documents = Vec::with_capacity(self.documents.len());
        for d in self.documents {
            let document = match (d.pipeline, d.schedule) {
                (Some(p), None) => Document::Pipeline(Arc::new(p)),
                (None, Some(s)) => Document::Schedule(Arc::new(s)),
                _ => return None,
            };
            documents.push(ParsedDocument {
                line: d.line,
                version: Arc::from(d.version),
                document,
            });
        }
        Some(ParsedFile {
            documents,
            findings: self.findings,
        })
    }
}

/// Reads the entries of `path` written by `identity` into `keep`; returns the number of lines
/// the file has (0 when it is missing or from another binary, so it is started afresh).
fn read_lines<T: for<'de> Deserialize<'de>>(
    path: &Path,
    identity: &str,
    mut keep: impl FnMut(T) -> Option<()>,
) -> usize {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return 0,
        Err(error) => {
            tracing::warn!(file = %path.display(), %error, "cannot read the definitions cache");
            return 0;
        }
    };
    let mut lines = BufReader::new(file).lines();
    let header = lines
        .next()
        .and_then(Result::ok)
        .and_then(|line| serde_json::from_str::<Header>(&line).ok());
    if header.is_none_or(|h| h.identity != identity) {
        return 0;
    }
    let mut count = 1;
    for line in lines {
        count += 1;
        let Ok(line) = line else { break };
        // A line cut short by a crash, or damaged: that entry is parsed again.
        if let Ok(entry) = serde_json::from_str::<T>(&line) {
            keep(entry);
        }
    }
    count
}

impl Appender {
    /// Appends to `path` after its `lines`; with none, starts it with a header.
    fn open(path: PathBuf, identity: &str, lines: usize) -> Appender {
        let mut appender = Appender {
            path,
            lines,
            file: None,
        };
        if lines == 0 {
            appender.rewrite(identity, std::iter::empty());
        } else {
            match open_after_last_line(&appender.path) {
                Ok(file) => appender.file = Some(BufWriter::new(file)),
                Err(error) => appender.failed(&error),
            }
        }
        appender
    }

    /// Whether writing `fresh` entries would leave more stale lines than live ones.
    fn stale(&self, fresh: usize, live: usize) -> bool {
        self.lines + fresh > 2 * live + SLACK
    }

    fn append(&mut self, lines: impl Iterator<Item = serde_json::Result<String>>) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let mut written = 0;
        let result = (|| -> io::Result<()> {
            for line in lines {
                let line = line.map_err(io::Error::other)?;
                file.write_all(line.as_bytes())?;
                file.write_all(b"\n")?;
                written += 1;
            }
            file.flush()
        })();
        self.lines += written;
        if let Err(error) = result {
            self.failed(&error);
        }
    }

    /// Writes a header and `lines` to a new file and renames it over the old one.
    fn rewrite(&mut self, identity: &str, lines: impl Iterator<Item = serde_json::Result<String>>) {
        self.file = None;
        let temporary = self.path.with_extension("jsonl.new");
        let result = (|| -> io::Result<usize> {
            let mut file = BufWriter::new(File::create(&temporary)?);
            let header = serde_json::to_string(&Header {
                identity: identity.to_owned(),
            })?;
            writeln!(file, "{header}")?;
            let mut count = 1;
            for line in lines {
                writeln!(file, "{}", line?)?;
                count += 1;
            }
            file.flush()?;
            std::fs::rename(&temporary, &self.path)?;
            Ok(count)
        })();
        match result {
            Ok(count) => {
                self.lines = count;
                match OpenOptions::new().append(true).open(&self.path) {
                    Ok(file) => self.file = Some(BufWriter::new(file)),
                    Err(error) => self.failed(&error),
                }
            }
            Err(error) => self.failed(&error),
        }
    }

    fn failed(&mut self, error: &io::Error) {
        tracing::warn!(file = %self.path.display(), %error, "cannot write the definitions cache; it is not kept");
        self.file = None;
    }
}

/// Opens `path` for appending; a last line cut short by a crash is ended first, so the next
/// entry starts on a line of its own.
fn open_after_last_line(path: &Path) -> io::Result<File> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = OpenOptions::new().read(true).append(true).open(path)?;
    if file.metadata()?.len() > 0 {
        let mut last = [0u8];
        file.seek(SeekFrom::End(-1))?;
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
        }
    }
    Ok(file)
}

/// The identity of the running binary: its version, and the size and modification time of
/// its executable, so a rebuilt binary does not trust entries an older one wrote.
pub fn binary_identity() -> String {
    let stamp = std::env::current_exe()
        .and_then(std::fs::metadata)
        .map(|m| {
            let modified = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            format!("{}-{modified}", m.len())
        })
        // Without a way to tell binaries apart, nothing written before is trusted.
        .unwrap_or_else(|_| format!("unknown-{}", std::process::id()));
    format!("{FORMAT}-{}-{stamp}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(name: &str) -> (Oid, Arc<ParsedFile>) {
        let text = format!(
            "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {{name: {name}, owner: a}}\n\
             spec:\n  image: python:3\n  steps: [{{name: s, run: [x], timeout: 2h}}]\n---\n\
             apiVersion: trainyard.dev/v1\nkind: Schedule\nmetadata: {{name: {name}-s}}\n\
             spec: {{pipeline: {name}, cron: '@daily', unknown: 1}}\n"
        );
        let blob = Oid::hash_object(git2::ObjectType::Blob, text.as_bytes()).expect("hash");
        (blob, Arc::new(crate::spec::parse_file(text.as_bytes())))
    }

    fn verdict(key: &str) -> (String, Arc<[Violation]>) {
        let violation = Violation {
            severity: trainyard_policies::Severity::Warn,
            rule: "r".into(),
            kind: "Pipeline".into(),
            name: key.into(),
            field: Some("spec.image".into()),
            message: "m".into(),
            origin: trainyard_policies::Origin::Repository {
                path: "p.rego".into(),
            },
        };
        (key.to_owned(), vec![violation].into())
    }

    fn save(
        cache: &mut DiskCache,
        files: &[(Oid, Arc<ParsedFile>)],
        verdicts: &[(String, Arc<[Violation]>)],
    ) {
        let live: HashMap<Oid, Arc<ParsedFile>> = files.iter().cloned().collect();
        let judged: HashMap<String, Arc<[Violation]>> = verdicts.iter().cloned().collect();
        cache.save_parsed(files, live.iter());
        cache.save_verdicts(verdicts, judged.iter());
    }

    #[test]
    fn what_is_saved_reads_back_the_same_in_the_next_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = [parsed("a"), parsed("b")];
        assert!(
            files[0].1.has_errors(),
            "the unknown field is kept as a finding"
        );
        let (mut cache, loaded) = DiskCache::open(dir.path(), "one");
        assert!(loaded.parsed.is_empty() && loaded.verdicts.is_empty());
        save(&mut cache, &files, &[verdict("k1")]);
        drop(cache);

        let (_, loaded) = DiskCache::open(dir.path(), "one");
        assert_eq!(loaded.parsed.len(), 2);
        for (blob, file) in &files {
            let read = &loaded.parsed[blob];
            assert_eq!(read.findings, file.findings);
            assert_eq!(read.documents.len(), file.documents.len());
            assert!(!read.documents.is_empty());
            for (read, written) in read.documents.iter().zip(&file.documents) {
                assert_eq!(read.line, written.line);
                assert_eq!(read.version, written.version);
                assert_eq!(read.document, written.document);
            }
        }
        assert_eq!(loaded.verdicts["k1"], verdict("k1").1);
    }

    #[test]
    fn a_line_cut_short_by_a_crash_costs_only_its_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut cache, _) = DiskCache::open(dir.path(), "one");
        save(&mut cache, &[parsed("a")], &[]);
        drop(cache);
        let path = dir.path().join(PARSED);
        let whole = std::fs::read_to_string(&path).expect("read");
        let last = whole
            .trim_end()
            .rsplit('\n')
            .next()
            .expect("a line")
            .to_owned();
        std::fs::write(&path, format!("{whole}{}", &last[..last.len() / 2])).expect("write");

        let (mut cache, loaded) = DiskCache::open(dir.path(), "one");
        assert_eq!(
            loaded.parsed.len(),
            1,
            "the torn line is skipped, the whole one read"
        );
        let b = parsed("b");
        cache.save_parsed(std::slice::from_ref(&b), std::iter::empty());
        drop(cache);
        let (_, loaded) = DiskCache::open(dir.path(), "one");
        assert!(
            loaded.parsed.contains_key(&b.0),
            "an entry after the torn line reads"
        );
    }

    #[test]
    fn another_binary_does_not_trust_what_this_one_wrote() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut cache, _) = DiskCache::open(dir.path(), "one");
        save(&mut cache, &[parsed("a")], &[verdict("k1")]);
        drop(cache);
        let (_, loaded) = DiskCache::open(dir.path(), "two");
        assert!(loaded.parsed.is_empty() && loaded.verdicts.is_empty());
        let (_, loaded) = DiskCache::open(dir.path(), "one");
        assert!(
            loaded.parsed.is_empty(),
            "the other binary started the files afresh"
        );
    }

    #[test]
    fn stale_entries_are_dropped_when_they_outnumber_the_live_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut cache, _) = DiskCache::open(dir.path(), "one");
        let keep = verdict("kept");
        let live: HashMap<String, Arc<[Violation]>> = [keep.clone()].into_iter().collect();
        for i in 0..2 * SLACK {
            let fresh = [verdict(&format!("gone-{i}"))];
            cache.save_verdicts(&fresh, live.iter());
        }
        drop(cache);
        let lines = std::fs::read_to_string(dir.path().join(VERDICTS))
            .expect("read")
            .lines()
            .count();
        assert!(lines <= SLACK + 3, "{lines} lines for one live verdict");
        let (_, loaded) = DiskCache::open(dir.path(), "one");
        assert!(
            loaded.verdicts.contains_key("kept"),
            "the live verdict survives"
        );
    }
}
