//! The platform rules embedded in Trainyard.

/// The embedded platform modules, all in `package trainyard.platform`, in load order.
const PLATFORM_MODULES: &[(&str, &str)] = &[
    ("common.rego", include_str!("../rego/common.rego")),
    ("gpus.rego", include_str!("../rego/gpus.rego")),
    ("images.rego", include_str!("../rego/images.rego")),
    ("models.rego", include_str!("../rego/models.rego")),
    ("sweeps.rego", include_str!("../rego/sweeps.rego")),
];

/// The embedded platform modules as `(file name, source)`, in load order.
pub fn platform_modules() -> &'static [(&'static str, &'static str)] {
    PLATFORM_MODULES
}

/// The name an embedded module is loaded under, so that engine messages about
/// it cannot be mistaken for a repository file.
pub(crate) fn platform_path(file: &str) -> String {
    format!("<platform>/{file}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PolicyConfig;
    use crate::evaluator::load_platform;

    /// The Rego tests of the platform rules, in `package trainyard.platform_test`.
    const TEST_MODULES: &[(&str, &str)] = &[
        (
            "fixtures_test.rego",
            include_str!("../rego/fixtures_test.rego"),
        ),
        ("gpus_test.rego", include_str!("../rego/gpus_test.rego")),
        ("images_test.rego", include_str!("../rego/images_test.rego")),
        ("models_test.rego", include_str!("../rego/models_test.rego")),
        ("sweeps_test.rego", include_str!("../rego/sweeps_test.rego")),
    ];

    /// The names of the `test_` rules of a module: lines that start with `test_`.
    fn test_rule_names(source: &str) -> Vec<String> {
        source
            .lines()
            .filter(|line| line.starts_with("test_"))
            .map(|line| {
                line.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect()
            })
            .collect()
    }

    /// Runs every Rego test rule and returns the names of those not `true`, with what they gave.
    fn failing_rego_tests(platform: &[(&str, &str)]) -> (usize, Vec<String>) {
        let mut engine = load_platform(platform, &PolicyConfig::default()).unwrap();
        let mut names = Vec::new();
        for (file, source) in TEST_MODULES {
            let package = engine
                .add_policy(format!("rego/{file}"), source.to_string())
                .unwrap();
            assert_eq!(package, "data.trainyard.platform_test", "{file}");
            names.extend(test_rule_names(source));
        }
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "duplicate Rego test names");
        let failures = names
            .iter()
            .filter_map(|name| {
                match engine.eval_rule(format!("data.trainyard.platform_test.{name}")) {
                    Ok(regorus::Value::Bool(true)) => None,
                    Ok(other) => Some(format!("{name}: {other:?}")),
                    Err(err) => Some(format!("{name}: error: {err}")),
                }
            })
            .collect();
        (names.len(), failures)
    }

    #[test]
    fn every_rego_test_passes() {
        let (count, failures) = failing_rego_tests(PLATFORM_MODULES);
        assert!(count >= 20, "only {count} Rego tests found");
        assert!(
            failures.is_empty(),
            "{} of {count} Rego tests failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn a_broken_rule_fails_the_rego_tests() {
        // Let the digest check accept uppercase hex digits.
        let images = include_str!("../rego/images.rego");
        let broken_images = images.replace("\"0123456789abcdef\"", "\"0123456789abcdefABCDEF\"");
        assert_ne!(images, broken_images);
        let broken: Vec<(&str, &str)> = PLATFORM_MODULES
            .iter()
            .map(|&(file, source)| {
                if file == "images.rego" {
                    (file, broken_images.as_str())
                } else {
                    (file, source)
                }
            })
            .collect();
        let (_, failures) = failing_rego_tests(&broken);
        assert!(
            failures
                .iter()
                .any(|f| f.contains("test_uppercase_digest_is_denied")),
            "{failures:?}"
        );
    }

    #[test]
    fn every_rego_file_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rego");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".rego"))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = PLATFORM_MODULES
            .iter()
            .chain(TEST_MODULES)
            .map(|(file, _)| file.to_string())
            .collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }

    #[test]
    fn every_platform_module_is_in_the_platform_package() {
        for (file, source) in platform_modules() {
            assert!(
                source
                    .lines()
                    .any(|line| line.trim() == "package trainyard.platform"),
                "{file}"
            );
        }
    }
}
