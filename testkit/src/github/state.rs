//! What the stand-in holds: the repository's commits, statuses, check runs, pull requests,
//! comments, permissions, issued tokens, rate-limit counters, injected faults and request records.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{Fault, Permission, RequestRecord};

/// One commit status as posted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRecord {
    /// GitHub's id for it.
    pub id: u64,
    /// The commit it is on.
    pub sha: String,
    /// pending, success, failure or error.
    pub state: String,
    /// The context (`default` when the request gave none).
    pub context: String,
    /// The description, if any.
    pub description: Option<String>,
    /// The link, if any.
    pub target_url: Option<String>,
    /// Login of the account that posted it.
    pub creator: String,
    /// When it was posted.
    pub created_at: DateTime<Utc>,
}

/// One issue or pull-request comment as held now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommentRecord {
    /// GitHub's id for it.
    pub id: u64,
    /// The issue or pull-request number.
    pub issue: u64,
    /// The current body.
    pub body: String,
    /// Login of its author.
    pub author: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last edited (the creation time if never).
    pub updated_at: DateTime<Utc>,
    /// How many times it was edited.
    pub edits: u32,
    /// The App id when an installation token created it.
    pub(crate) via_app: Option<u64>,
}

/// One annotation of a check run, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationRecord {
    /// The file, relative to the repository's root.
    pub path: String,
    /// First line, from 1.
    pub start_line: u64,
    /// Last line.
    pub end_line: u64,
    /// First column, only when the annotation is on one line.
    pub start_column: Option<u64>,
    /// Last column, likewise.
    pub end_column: Option<u64>,
    /// notice, warning or failure.
    pub level: String,
    /// What it says.
    pub message: String,
    /// Its title, if any.
    pub title: Option<String>,
    /// Details, if any.
    pub raw_details: Option<String>,
}

/// One button of a check run (`actions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRecord {
    /// What the button says (at most 20 characters).
    pub label: String,
    /// Its tooltip (at most 40 characters).
    pub description: String,
    /// What the `requested_action` webhook names (at most 20 characters).
    pub identifier: String,
}

/// One check run as held now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRunRecord {
    /// GitHub's id for it.
    pub id: u64,
    /// Its name, such as `trainyard/validate`.
    pub name: String,
    /// The commit it is on.
    pub head_sha: String,
    /// queued, in_progress or completed.
    pub status: String,
    /// Set once completed.
    pub conclusion: Option<String>,
    /// The caller's own id for it.
    pub external_id: Option<String>,
    /// Its link.
    pub details_url: Option<String>,
    /// The output's title.
    pub title: Option<String>,
    /// The output's summary (markdown).
    pub summary: Option<String>,
    /// The output's text (markdown).
    pub text: Option<String>,
    /// Every annotation sent, in order (updates append).
    pub annotations: Vec<AnnotationRecord>,
    /// Its buttons.
    pub actions: Vec<ActionRecord>,
    /// Slug of the App that created it (only that App may update it).
    pub app: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it completed.
    pub completed_at: Option<DateTime<Utc>>,
    /// How many times it was updated.
    pub updates: u32,
}

/// A pull request as the test set it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRecord {
    /// Its number.
    pub number: u64,
    /// GitHub's id for it.
    pub id: u64,
    /// Title.
    pub title: String,
    /// Login of the author.
    pub author: String,
    /// Head commit.
    pub head_sha: String,
    /// Head branch name.
    pub head_ref: String,
    /// Base branch name.
    pub base_ref: String,
    /// Base commit.
    pub base_sha: String,
    /// Whether the head lives in a fork (`<author>/<repo>`).
    pub from_fork: bool,
    /// open or closed.
    pub state: String,
    /// Set when merged.
    pub merged: bool,
    /// The merge commit once merged (GitHub also sets a test merge commit while open).
    pub merge_commit_sha: Option<String>,
    /// When it was opened.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it was closed or merged.
    pub closed_at: Option<DateTime<Utc>>,
}

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Principal {
    /// A personal access token of this login.
    User(String),
    /// An installation access token.
    Installation { installation: u64, expires: Instant },
    /// Actions' `GITHUB_TOKEN`, which writes as `github-actions[bot]`.
    Actions,
}

/// Per-token rate-limit bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    /// Requests counted in the current hourly window.
    pub(crate) used: u64,
    /// When the current window started.
    pub(crate) window_start: Option<Instant>,
    /// Content-creating requests of the last hour (or `secondary_window`, if longer).
    pub(crate) writes: VecDeque<Instant>,
}

/// All mutable state, behind one lock.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) commits: HashSet<String>,
    pub(crate) branches: HashMap<String, String>,
    pub(crate) statuses: Vec<StatusRecord>,
    pub(crate) check_runs: BTreeMap<u64, CheckRunRecord>,
    pub(crate) pulls: BTreeMap<u64, PullRecord>,
    pub(crate) comments: BTreeMap<u64, CommentRecord>,
    pub(crate) permissions: HashMap<String, Permission>,
    pub(crate) tokens: HashMap<String, Principal>,
    pub(crate) usage: HashMap<String, Usage>,
    pub(crate) faults: Vec<Fault>,
    pub(crate) records: Vec<RequestRecord>,
    pub(crate) next_id: u64,
    pub(crate) issued: u64,
    /// Every list's `next` link names page 2, whatever page was asked for.
    pub(crate) looping_links: bool,
}

impl State {
    pub(crate) fn new() -> Self {
        Self {
            commits: HashSet::new(),
            branches: HashMap::new(),
            statuses: Vec::new(),
            check_runs: BTreeMap::new(),
            pulls: BTreeMap::new(),
            comments: BTreeMap::new(),
            permissions: HashMap::new(),
            tokens: HashMap::new(),
            usage: HashMap::new(),
            faults: Vec::new(),
            records: Vec::new(),
            next_id: 1_000_001,
            issued: 0,
            looping_links: false,
        }
    }

    /// A fresh id; one counter for every kind of object, as GitHub's ids never collide
    /// within a type and tests are clearer when they do not collide across types either.
    pub(crate) fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// A commit sha for a ref: a known sha, or a branch's head (`main` or `heads/main`).
    pub(crate) fn resolve(&self, reference: &str) -> Option<String> {
        if self.commits.contains(reference) {
            return Some(reference.to_string());
        }
        let branch = reference.strip_prefix("heads/").unwrap_or(reference);
        self.branches.get(branch).cloned()
    }

    /// Drops write timestamps older than `window`, returning how many remain.
    pub(crate) fn recent_writes(
        &mut self,
        key: &str,
        window: Duration,
        kept: Duration,
        now: Instant,
    ) -> (usize, Option<Instant>) {
        let usage = self.usage.entry(key.to_string()).or_default();
        while usage
            .writes
            .front()
            .is_some_and(|t| now.duration_since(*t) >= kept)
        {
            usage.writes.pop_front();
        }
        let mut recent = usage
            .writes
            .iter()
            .filter(|t| now.duration_since(**t) < window);
        let oldest = recent.next().copied();
        (oldest.map_or(0, |_| 1 + recent.count()), oldest)
    }
}

/// A request body's JSON, `None` when absent or not JSON.
pub(crate) fn parse_body(bytes: &[u8]) -> Option<Value> {
    if bytes.is_empty() {
        return None;
    }
    serde_json::from_slice(bytes).ok()
}
