//! What a forge tells Trainyard through its webhooks, as the event queue stores it: the forge
//! event type every forge's webhook parser produces and the loop consumes.

use serde::{Deserialize, Serialize};

/// What a forge told Trainyard, as stored in the event queue (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ForgeEvent {
    /// The forge checks that the hook works; nothing to do.
    Ping,
    /// A branch moved.
    Push {
        /// The branch, without `refs/heads/`.
        branch: String,
        /// The commit it points at now.
        after: String,
    },
    /// A pull request was opened, updated, reopened or closed.
    PullRequest {
        /// What happened to it.
        action: PrAction,
        /// Its number.
        number: u64,
        /// The commit at its head.
        head_sha: String,
        /// Its head branch (in the head repository, which may be a fork).
        head_ref: String,
        /// The branch it merges into.
        base_ref: String,
        /// Whether the head lives in another repository than the base.
        from_fork: bool,
        /// Login of the pull request's author.
        author: String,
    },
    /// Someone commented on a pull request.
    Comment {
        /// The pull request's number.
        pr: u64,
        /// The comment's id.
        comment_id: u64,
        /// Login of the comment's author.
        author: String,
        /// The comment's text (markdown).
        body: String,
    },
    /// Someone pressed a button of one of Trainyard's check runs.
    CheckRunAction {
        /// The check run's id.
        check_run_id: u64,
        /// The commit it is on.
        head_sha: String,
        /// The pull request it is for.
        pr: u64,
        /// The button's identifier.
        identifier: String,
        /// Login of whoever pressed it.
        sender: String,
    },
}

/// What happened to a pull request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrAction {
    /// Opened.
    Opened,
    /// New commits were pushed to its head.
    Synchronize,
    /// Reopened after being closed.
    Reopened,
    /// Closed, merged or not.
    Closed {
        /// Whether it was merged.
        merged: bool,
    },
}
