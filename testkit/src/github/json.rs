//! GitHub's JSON shapes for the objects the stand-in serves, with every field octocrab's
//! models require when deserializing (`id`, `node_id`, `url`, `html_url`, full `user`
//! objects, timestamps).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::state::{CommentRecord, PullRecord, StatusRecord};

/// Where the stand-in lives and which repository it serves.
#[derive(Debug, Clone)]
pub(crate) struct Site {
    /// `http://127.0.0.1:<port>`, the API root.
    pub(crate) api: String,
    pub(crate) owner: String,
    pub(crate) repo: String,
    pub(crate) repo_id: u64,
    pub(crate) private: bool,
    pub(crate) app_id: u64,
    pub(crate) app_slug: String,
    pub(crate) installation_id: u64,
}

/// A stable numeric id for a login, so the same user always has the same id.
pub(crate) fn user_id(login: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in login.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    1 + h % 99_999_999
}

pub(crate) fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The login an App's installation acts as.
pub(crate) fn bot_login(slug: &str) -> String {
    format!("{slug}[bot]")
}

impl Site {
    pub(crate) fn web(&self) -> String {
        format!("{}/web", self.api)
    }

    pub(crate) fn full_name(&self) -> String {
        format!("{}/{}", self.owner, self.repo)
    }

    pub(crate) fn repo_url(&self) -> String {
        format!("{}/repos/{}/{}", self.api, self.owner, self.repo)
    }

    /// A "simple user": what GitHub embeds as `user`, `owner`, `creator`, `sender`.
    pub(crate) fn user(&self, login: &str) -> Value {
        let api = &self.api;
        let id = user_id(login);
        let bot = login.ends_with("[bot]");
        json!({
            "login": login,
            "id": id,
            "node_id": format!("U_kgDO{id:08}"),
            "avatar_url": format!("{}/avatars/u/{id}?v=4", self.web()),
            "gravatar_id": "",
            "url": format!("{api}/users/{login}"),
            "html_url": format!("{}/{login}", self.web()),
            "followers_url": format!("{api}/users/{login}/followers"),
            "following_url": format!("{api}/users/{login}/following{{/other_user}}"),
            "gists_url": format!("{api}/users/{login}/gists{{/gist_id}}"),
            "starred_url": format!("{api}/users/{login}/starred{{/owner}}{{/repo}}"),
            "subscriptions_url": format!("{api}/users/{login}/subscriptions"),
            "organizations_url": format!("{api}/users/{login}/orgs"),
            "repos_url": format!("{api}/users/{login}/repos"),
            "events_url": format!("{api}/users/{login}/events{{/privacy}}"),
            "received_events_url": format!("{api}/users/{login}/received_events"),
            "type": if bot { "Bot" } else { "User" },
            "user_view_type": "public",
            "site_admin": false
        })
    }

    /// A repository (the served one, or a fork of it owned by `owner`).
    pub(crate) fn repository(&self, owner: &str, fork: bool) -> Value {
        let api = &self.api;
        let name = &self.repo;
        let id = if fork {
            user_id(&format!("{owner}/{name}"))
        } else {
            self.repo_id
        };
        json!({
            "id": id,
            "node_id": format!("R_kgDO{id:08}"),
            "name": name,
            "full_name": format!("{owner}/{name}"),
            "private": self.private,
            "owner": self.user(owner),
            "html_url": format!("{}/{owner}/{name}", self.web()),
            "description": null,
            "fork": fork,
            "url": format!("{api}/repos/{owner}/{name}"),
            "clone_url": format!("{}/{owner}/{name}.git", self.web()),
            "default_branch": "main",
            "visibility": if self.private { "private" } else { "public" }
        })
    }

    pub(crate) fn status(&self, s: &StatusRecord) -> Value {
        json!({
            "url": format!("{}/statuses/{}", self.repo_url(), s.sha),
            "avatar_url": format!("{}/avatars/u/{}?v=4", self.web(), user_id(&s.creator)),
            "id": s.id,
            "node_id": format!("SC_kwDO{:08}", s.id),
            "state": s.state,
            "description": s.description,
            "target_url": s.target_url,
            "context": s.context,
            "created_at": time(s.created_at),
            "updated_at": time(s.created_at),
            "creator": self.user(&s.creator)
        })
    }

    pub(crate) fn comment(&self, c: &CommentRecord) -> Value {
        let mut v = json!({
            "id": c.id,
            "node_id": format!("IC_kwDO{:08}", c.id),
            "url": format!("{}/issues/comments/{}", self.repo_url(), c.id),
            "html_url": format!("{}/{}/pull/{}#issuecomment-{}", self.web(), self.full_name(), c.issue, c.id),
            "issue_url": format!("{}/issues/{}", self.repo_url(), c.issue),
            "body": c.body,
            "user": self.user(&c.author),
            "created_at": time(c.created_at),
            "updated_at": time(c.updated_at),
            "author_association": if c.via_app.is_some() { "NONE" } else { "CONTRIBUTOR" },
            "reactions": {"url": format!("{}/issues/comments/{}/reactions", self.repo_url(), c.id),
                          "total_count": 0, "+1": 0, "-1": 0, "laugh": 0, "hooray": 0,
                          "confused": 0, "heart": 0, "rocket": 0, "eyes": 0},
            "performed_via_github_app": null
        });
        if c.via_app.is_some() {
            v["performed_via_github_app"] = self.app();
        }
        v
    }

    pub(crate) fn pull(&self, p: &PullRecord) -> Value {
        let api = self.repo_url();
        let head_owner = if p.from_fork { &p.author } else { &self.owner };
        json!({
            "url": format!("{api}/pulls/{}", p.number),
            "id": p.id,
            "node_id": format!("PR_kwDO{:08}", p.id),
            "html_url": format!("{}/{}/pull/{}", self.web(), self.full_name(), p.number),
            "diff_url": format!("{}/{}/pull/{}.diff", self.web(), self.full_name(), p.number),
            "patch_url": format!("{}/{}/pull/{}.patch", self.web(), self.full_name(), p.number),
            "issue_url": format!("{api}/issues/{}", p.number),
            "commits_url": format!("{api}/pulls/{}/commits", p.number),
            "comments_url": format!("{api}/issues/{}/comments", p.number),
            "statuses_url": format!("{api}/statuses/{}", p.head_sha),
            "number": p.number,
            "state": p.state,
            "locked": false,
            "title": p.title,
            "user": self.user(&p.author),
            "body": null,
            "labels": [],
            "created_at": time(p.created_at),
            "updated_at": time(p.updated_at),
            "closed_at": p.closed_at.map(time),
            "merged_at": if p.merged { p.closed_at.map(time) } else { None },
            "merge_commit_sha": p.merge_commit_sha,
            "draft": false,
            "head": {
                "label": format!("{head_owner}:{}", p.head_ref),
                "ref": p.head_ref,
                "sha": p.head_sha,
                "user": self.user(head_owner),
                "repo": self.repository(head_owner, p.from_fork)
            },
            "base": {
                "label": format!("{}:{}", self.owner, p.base_ref),
                "ref": p.base_ref,
                "sha": p.base_sha,
                "user": self.user(&self.owner),
                "repo": self.repository(&self.owner, false)
            },
            "author_association": if p.from_fork { "CONTRIBUTOR" } else { "MEMBER" },
            "merged": p.merged,
            "mergeable": null,
            "comments": 0,
            "commits": 1
        })
    }

    pub(crate) fn app(&self) -> Value {
        json!({
            "id": self.app_id,
            "slug": self.app_slug,
            "node_id": format!("A_kwDO{:08}", self.app_id),
            "owner": self.user(&self.owner),
            "name": self.app_slug,
            "description": "",
            "external_url": format!("{}/{}", self.web(), self.app_slug),
            "html_url": format!("{}/apps/{}", self.web(), self.app_slug),
            "created_at": "2024-01-01T00:00:00Z",
            "updated_at": "2024-01-01T00:00:00Z",
            "permissions": self.permissions(),
            "events": ["check_run", "issue_comment", "pull_request", "push"]
        })
    }

    pub(crate) fn permissions(&self) -> Value {
        json!({"checks": "write", "contents": "read", "metadata": "read",
               "pull_requests": "write", "statuses": "write", "issues": "write"})
    }

    pub(crate) fn installation(&self) -> Value {
        json!({
            "id": self.installation_id,
            "account": self.user(&self.owner),
            "access_tokens_url": format!("{}/app/installations/{}/access_tokens", self.api, self.installation_id),
            "repositories_url": format!("{}/installation/repositories", self.api),
            "html_url": format!("{}/settings/installations/{}", self.web(), self.installation_id),
            "app_id": self.app_id,
            "app_slug": self.app_slug,
            "target_id": user_id(&self.owner),
            "target_type": "Organization",
            "permissions": self.permissions(),
            "events": ["check_run", "issue_comment", "pull_request", "push"],
            "created_at": "2024-01-01T00:00:00Z",
            "updated_at": "2024-01-01T00:00:00Z",
            "single_file_name": null,
            "repository_selection": "selected"
        })
    }
}
