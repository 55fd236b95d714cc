//! The resource types the stand-in serves and how their URLs and kinds are spelled.

/// One served resource type (group/version/plural), as discovery would describe it.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// Position in [`ALL`]; the store keeps one map per index.
    pub index: usize,
    /// API group, empty for the core group.
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// Plural, lower-case name used in URLs and RBAC rules.
    pub plural: &'static str,
    /// Kind of the objects.
    pub kind: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Whether `status` is a subresource that the main resource's writes do not touch.
    pub status_subresource: bool,
}

impl ResourceType {
    /// `batch/v1` or `v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const fn rt(
    index: usize,
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status_subresource: bool,
) -> ResourceType {
    ResourceType {
        index,
        group,
        version,
        plural,
        kind,
        namespaced,
        status_subresource,
    }
}

/// Every served resource type.
pub static ALL: [ResourceType; 10] = [
    rt(0, "batch", "v1", "jobs", "Job", true, true),
    rt(1, "", "v1", "pods", "Pod", true, true),
    rt(2, "", "v1", "events", "Event", true, false),
    rt(3, "events.k8s.io", "v1", "events", "Event", true, false),
    rt(
        4,
        "coordination.k8s.io",
        "v1",
        "leases",
        "Lease",
        true,
        false,
    ),
    rt(5, "", "v1", "secrets", "Secret", true, false),
    rt(6, "", "v1", "configmaps", "ConfigMap", true, false),
    rt(7, "", "v1", "namespaces", "Namespace", false, true),
    rt(
        8,
        "",
        "v1",
        "serviceaccounts",
        "ServiceAccount",
        true,
        false,
    ),
    rt(9, "", "v1", "resourcequotas", "ResourceQuota", true, true),
];

/// batch/v1 jobs.
pub fn jobs() -> &'static ResourceType {
    &ALL[0]
}

/// v1 pods.
pub fn pods() -> &'static ResourceType {
    &ALL[1]
}

/// v1 namespaces.
pub fn namespaces() -> &'static ResourceType {
    &ALL[7]
}

/// v1 secrets.
pub fn secrets() -> &'static ResourceType {
    &ALL[5]
}

/// v1 events (the core group's, which the Job controller writes).
pub fn events() -> &'static ResourceType {
    &ALL[2]
}

/// v1 resourcequotas.
pub fn resource_quotas() -> &'static ResourceType {
    &ALL[9]
}

/// v1 configmaps.
pub fn configmaps() -> &'static ResourceType {
    &ALL[6]
}

/// The resource type served at `group/version/plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    ALL.iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource type of an object with this apiVersion and kind.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    ALL.iter()
        .find(|r| r.api_version() == api_version && r.kind == kind)
}

/// A name the test controls accept: `jobs`, `pods`, `leases`, `events.k8s.io/events`,
/// `batch/v1/jobs`, `job`, `Job`.
pub fn by_name(name: &str) -> Option<&'static ResourceType> {
    let lower = name.to_ascii_lowercase();
    let parts: Vec<&str> = lower.split('/').collect();
    match parts.as_slice() {
        [plural] => ALL.iter().find(|r| {
            r.plural == *plural
                || r.kind.eq_ignore_ascii_case(plural)
                || format!("{}s", r.kind.to_ascii_lowercase()) == *plural
        }),
        [group, plural] => ALL
            .iter()
            .find(|r| r.group == *group && r.plural == *plural),
        [group, version, plural] => find(group, version, plural),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_match_positions_and_names_resolve() {
        for (i, r) in ALL.iter().enumerate() {
            assert_eq!(r.index, i);
        }
        assert_eq!(by_name("jobs").unwrap().kind, "Job");
        assert_eq!(by_name("Lease").unwrap().group, "coordination.k8s.io");
        assert_eq!(by_name("events.k8s.io/events").unwrap().index, 3);
        assert_eq!(by_name("events").unwrap().index, 2);
        assert_eq!(by_kind("batch/v1", "Job").unwrap().plural, "jobs");
        assert!(find("apps", "v1", "deployments").is_none());
    }
}
