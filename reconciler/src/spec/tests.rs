//! Tests of parsing and checking whole files: each check, at the line and column it reports.

use std::sync::Arc;

use super::*;

/// Parses one file as `p.yaml`, assembles a catalog of it, and returns `(line, column, code)`
/// for every diagnostic.
fn check(yaml: &str) -> Vec<(u32, u32, String)> {
    diagnostics(yaml)
        .into_iter()
        .map(|d| (d.line, d.column, d.code))
        .collect()
}

fn diagnostics(yaml: &str) -> Vec<Diagnostic> {
    let parsed = Arc::new(parse_file(yaml.as_bytes()));
    let path: Arc<str> = Arc::from("p.yaml");
    let (_, cross) = Catalog::assemble(Settings::default(), &[(path, parsed.clone())]);
    let mut findings = parsed.findings.clone();
    findings.extend(cross.into_iter().map(|(_, f)| f));
    Diagnostic::resolve("p.yaml", Some(yaml), &findings)
}

fn codes(yaml: &str) -> Vec<String> {
    check(yaml).into_iter().map(|(_, _, c)| c).collect()
}

const HEAD: &str = "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {name: churn, owner: team}\nspec:\n  image: img@sha256:0\n";

fn pipeline(body: &str) -> String {
    format!("{HEAD}{body}")
}

#[test]
fn a_valid_pipeline_and_schedule_have_no_diagnostics() {
    let yaml = pipeline(
        "  params: {epochs: {type: int, default: 3}, lr: {type: float, default: 1}}\n  steps:\n    - name: prepare\n      run: [python3, p.py, --out, '{{ outputs.data }}']\n      outputs: [data]\n    - name: train\n      needs: [prepare]\n      run: [python3, t.py, '{{ steps.prepare.outputs.data }}', '{{ params.epochs }}', '{{ outputs.model }}', '{{ run.id }}']\n      outputs: [model, metrics]\n      resources: {cpu: 500m, memory: 2Gi, gpu: 1, gpu_type: h100}\n      timeout: 1h30m\n      retries: 2\n  model: {name: churn-model, artifact: steps.train.outputs.model, metrics: steps.train.outputs.metrics, gate: [{metric: auc, min: 0.8}], promote: champion}\n---\napiVersion: trainyard.dev/v1\nkind: Schedule\nmetadata: {name: nightly}\nspec: {pipeline: churn, cron: '0 2 * * *', timezone: Europe/Berlin, params: {epochs: 10}, starting_deadline: 1h}\n",
    );
    assert_eq!(check(&yaml), []);
}

#[test]
fn unknown_needs_point_at_the_entry_with_a_suggestion() {
    let yaml = pipeline(
        "  steps:\n    - {name: prepare, run: [a]}\n    - name: train\n      needs: [prepped]\n      run: [b]\n",
    );
    let diags = diagnostics(&yaml);
    assert_eq!(
        (diags[0].line, diags[0].column, diags[0].code.as_str()),
        (9, 15, "unknown-step")
    );
    assert_eq!(
        diags[0].message,
        "step \"train\" needs unknown step \"prepped\""
    );
    assert_eq!(diags[0].hint.as_deref(), Some("did you mean `prepare`?"));
}

#[test]
fn cycles_are_named_in_order() {
    let yaml = pipeline(
        "  steps:\n    - {name: a, needs: [c], run: [x]}\n    - {name: b, needs: [a], run: [x]}\n    - {name: c, needs: [b], run: [x]}\n",
    );
    let diags = diagnostics(&yaml);
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_eq!(diags[0].code, "cycle");
    assert_eq!(diags[0].message, "steps form a cycle: a → c → b → a");
    assert_eq!((diags[0].line, diags[0].column), (7, 25));
}

#[test]
fn self_needs_and_duplicate_steps_are_errors() {
    let yaml =
        pipeline("  steps:\n    - {name: a, needs: [a], run: [x]}\n    - {name: a, run: [x]}\n");
    assert_eq!(
        check(&yaml),
        [
            (7, 25, "self-need".to_owned()),
            (8, 14, "duplicate-step".to_owned())
        ]
    );
}

#[test]
fn names_must_be_short_lowercase_and_dashed() {
    for bad in [
        "Churn",
        "churn_v2",
        "-churn",
        "a-very-long-pipeline-name-that-goes-over-forty",
    ] {
        let yaml = format!(
            "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {{name: {bad}, owner: t}}\nspec: {{image: i, steps: [{{name: s, run: [x]}}]}}\n"
        );
        assert_eq!(check(&yaml), [(3, 18, "invalid-name".to_owned())], "{bad}");
    }
}

#[test]
fn template_references_must_exist_and_come_from_ancestors() {
    let yaml = pipeline(
        "  params: {epochs: {type: int, default: 1}}\n  steps:\n    - {name: a, run: [x, '{{ outputs.out }}'], outputs: [out]}\n    - {name: b, run: [x, '{{ steps.a.outputs.out }}']}\n    - {name: c, needs: [a], run: ['{{ params.epoch }}', '{{ outputs.nope }}', '{{ steps.a.outputs.outt }}', '{{ steps.zz.outputs.x }}', '{{ bogus }}', '{{ params.epochs']}\n",
    );
    assert_eq!(
        check(&yaml),
        [
            (9, 26, "not-an-ancestor".to_owned()),
            (10, 35, "unknown-param".to_owned()),
            (10, 57, "unknown-output".to_owned()),
            (10, 79, "unknown-output".to_owned()),
            (10, 109, "unknown-step".to_owned()),
            (10, 137, "invalid-template".to_owned()),
            (10, 152, "invalid-template".to_owned()),
        ]
    );
}

#[test]
fn transitive_ancestors_may_be_read() {
    let yaml = pipeline(
        "  steps:\n    - {name: a, run: [x], outputs: [o]}\n    - {name: b, needs: [a], run: [x]}\n    - {name: c, needs: [b], run: ['{{ steps.a.outputs.o }}']}\n",
    );
    assert_eq!(check(&yaml), []);
}

#[test]
fn param_defaults_must_match_their_type() {
    let yaml = pipeline(
        "  params:\n    epochs: {type: int, default: 2.5}\n    name: {type: string, default: 3}\n    flag: {type: bool, default: 'yes'}\n    lr: {type: float, default: 1}\n  steps: [{name: s, run: [x]}]\n",
    );
    assert_eq!(
        check(&yaml),
        [
            (7, 34, "param-type".to_owned()),
            (8, 35, "param-type".to_owned()),
            (9, 33, "param-type".to_owned())
        ]
    );
}

#[test]
fn unknown_param_types_and_fields_are_errors_at_their_place() {
    assert_eq!(
        check(&pipeline(
            "  params: {e: {type: integer}}\n  steps: [{name: s, run: [x]}]\n"
        )),
        [(6, 22, "yaml".to_owned())]
    );
    assert_eq!(
        check(&pipeline("  steps: [{name: s, run: [x], retry: 2}]\n")),
        [(6, 31, "unknown-field".to_owned())]
    );
}

#[test]
fn run_must_be_a_non_empty_argv_list() {
    let diags = diagnostics(&pipeline("  steps: [{name: s, run: python3 train.py}]\n"));
    assert_eq!((diags[0].line, diags[0].code.as_str()), (6, "yaml"));
    assert!(
        diags[0].message.contains("argv list"),
        "{}",
        diags[0].message
    );
    assert_eq!(
        codes(&pipeline("  steps: [{name: s, run: []}]\n")),
        ["empty-run"]
    );
}

#[test]
fn empty_steps_are_an_error() {
    assert_eq!(
        check(&pipeline("  steps: []\n")),
        [(6, 10, "no-steps".to_owned())]
    );
}

#[test]
fn output_names_that_could_escape_are_refused() {
    let yaml = pipeline("  steps: [{name: s, run: [x], outputs: [../etc, a/b, Model, ok, ok]}]\n");
    assert_eq!(
        codes(&yaml),
        [
            "output-escapes",
            "output-escapes",
            "invalid-output-name",
            "duplicate-output"
        ]
    );
}

#[test]
fn quantities_gpus_durations_and_retries_are_checked() {
    let yaml = pipeline(
        "  steps:\n    - name: s\n      run: [x]\n      resources: {cpu: 2cores, memory: 512m, gpu: 32, gpu_type: H100}\n      timeout: 4hours\n      retries: 11\n",
    );
    assert_eq!(
        codes(&yaml),
        [
            "invalid-quantity",
            "invalid-quantity",
            "gpu-count",
            "invalid-name",
            "invalid-duration",
            "too-many-retries"
        ]
    );
    let diags = diagnostics(&yaml);
    assert_eq!((diags[0].line, diags[0].column), (9, 24));
    assert_eq!((diags[4].line, diags[4].column), (10, 16));
    let negative = pipeline("  steps: [{name: s, run: [x], resources: {gpu: -1}}]\n");
    assert_eq!(codes(&negative), ["yaml"]);
}

#[test]
fn a_gpu_type_needs_gpus() {
    let yaml = pipeline("  steps: [{name: s, run: [x], resources: {gpu_type: h100}}]\n");
    assert_eq!(codes(&yaml), ["gpu-type-without-gpu"]);
}

#[test]
fn the_model_block_must_name_real_outputs_and_bounded_gates() {
    let yaml = pipeline(
        "  steps: [{name: t, run: [x], outputs: [model]}]\n  model:\n    name: m\n    artifact: steps.t.outputs.modl\n    metrics: steps.x.outputs.metrics\n    gate: [{metric: auc}, {metric: auc, min: 1, max: 2}]\n",
    );
    assert_eq!(
        check(&yaml),
        [
            (9, 15, "unknown-output".to_owned()),
            (10, 14, "unknown-step".to_owned()),
            (11, 12, "gate-without-bound".to_owned()),
            (11, 27, "gate-with-several-bounds".to_owned()),
        ]
    );
    let bad_ref = pipeline(
        "  steps: [{name: t, run: [x], outputs: [model]}]\n  model: {name: m, artifact: model}\n",
    );
    assert_eq!(codes(&bad_ref), ["invalid-output-ref"]);
}

#[test]
fn on_change_pipelines_need_defaults_for_every_param() {
    let yaml = pipeline(
        "  triggers: {on_change: true}\n  params: {epochs: {type: int}}\n  steps: [{name: s, run: [x]}]\n",
    );
    assert_eq!(codes(&yaml), ["required-param-on-change"]);
}

#[test]
fn pipelines_need_an_owner() {
    let yaml = "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {name: a}\nspec: {image: i, steps: [{name: s, run: [x]}]}\n";
    assert_eq!(check(yaml), [(3, 11, "missing-owner".to_owned())]);
}

#[test]
fn every_step_needs_an_image_from_somewhere() {
    let yaml = "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {name: a, owner: t}\nspec: {steps: [{name: s, run: [x]}, {name: u, image: i, run: [x]}]}\n";
    assert_eq!(codes(yaml), ["missing-image"]);
}

const SCHEDULE: &str = "apiVersion: trainyard.dev/v1\nkind: Schedule\nmetadata: {name: nightly}\nspec:\n  pipeline: churn\n";

#[test]
fn schedules_check_cron_timezone_enums_and_durations() {
    let yaml = format!(
        "{}\n---\n{SCHEDULE}  cron: '* * *'\n  timezone: Europe/Berln\n  starting_deadline: soon\n  max_catchup: 0\n",
        pipeline("  params: {e: {type: int, default: 1}}\n  steps: [{name: s, run: [x]}]")
    );
    let diags = diagnostics(&yaml);
    let got: Vec<(u32, &str)> = diags.iter().map(|d| (d.line, d.code.as_str())).collect();
    assert_eq!(
        got,
        [
            (14, "invalid-cron"),
            (15, "unknown-timezone"),
            (16, "invalid-duration"),
            (17, "invalid-max-catchup")
        ]
    );
    assert_eq!(
        diags[1].hint.as_deref(),
        Some("did you mean `Europe/Berlin`?")
    );
    let bad_enum = format!("{SCHEDULE}  cron: '@daily'\n  concurrency: sometimes\n");
    assert_eq!(check(&bad_enum), [(7, 16, "yaml".to_owned())]);
}

#[test]
fn schedules_must_target_a_known_pipeline_with_declared_typed_params() {
    let base = pipeline(
        "  params: {epochs: {type: int, default: 1}, size: {type: string}}\n  steps: [{name: s, run: [x]}]",
    );
    let unknown = format!("{base}\n---\n{SCHEDULE}  cron: '@daily'\n  pipeline: chrun\n");
    let yaml = unknown.replace("  pipeline: churn\n  cron", "  cron");
    let diags = diagnostics(&yaml);
    assert_eq!(
        (diags[0].line, diags[0].code.as_str()),
        (14, "unknown-pipeline")
    );
    assert_eq!(diags[0].hint.as_deref(), Some("did you mean `churn`?"));

    let params =
        format!("{base}\n---\n{SCHEDULE}  cron: '@daily'\n  params: {{epochs: ten, epoch: 1}}\n");
    let got: Vec<(u32, u32, String)> = check(&params);
    assert_eq!(
        got,
        [
            (15, 11, "schedule-param".to_owned()),
            (15, 20, "schedule-param".to_owned()),
            (15, 32, "schedule-param".to_owned())
        ]
    );
}

#[test]
fn duplicate_names_across_documents_point_at_the_second() {
    let one = pipeline("  steps: [{name: s, run: [x]}]");
    let yaml = format!("{one}\n---\n{one}\n");
    let diags = diagnostics(&yaml);
    assert_eq!(
        (diags[0].line, diags[0].column, diags[0].code.as_str()),
        (10, 18, "duplicate-name")
    );
    assert!(
        diags[0]
            .message
            .contains("already defined in p.yaml (document at line 1)"),
        "{}",
        diags[0].message
    );
}

#[test]
fn wrong_api_version_and_unknown_kind_are_errors() {
    let yaml = "apiVersion: trainyard.dev/v2\nkind: Pipeline\nmetadata: {name: a, owner: t}\nspec: {image: i, steps: [{name: s, run: [x]}]}\n---\napiVersion: trainyard.dev/v1\nkind: Job\nmetadata: {name: a}\nspec: {}\n";
    assert_eq!(
        check(yaml),
        [
            (1, 13, "api-version".to_owned()),
            (7, 7, "unknown-kind".to_owned())
        ]
    );
}

#[test]
fn one_bad_document_does_not_hide_the_next_one() {
    let yaml = format!(
        "{}\n---\n{}\n",
        pipeline("  steps: [{name: s, run: [x], typo: 1}]"),
        pipeline("  steps: [{name: S, run: [x]}]").replace("churn", "other")
    );
    assert_eq!(codes(&yaml), ["unknown-field", "invalid-name"]);
}

#[test]
fn syntax_errors_report_their_position() {
    let diags = diagnostics("apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {name: a\n");
    assert_eq!(diags.len(), 1);
    assert_eq!((diags[0].line, diags[0].code.as_str()), (3, "yaml"));
}

#[test]
fn duplicate_keys_are_errors() {
    let yaml = pipeline("  steps: [{name: s, run: [x]}]\n  steps: []\n");
    assert_eq!(codes(&yaml), ["yaml"]);
}

#[test]
fn alias_bombs_are_refused_quickly() {
    let mut yaml = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let prev = i - 1;
        yaml.push_str(&format!("a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"));
    }
    let started = std::time::Instant::now();
    let parsed = parse_file(yaml.as_bytes());
    assert!(parsed.has_errors());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn deep_nesting_is_refused() {
    let yaml = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let parsed = parse_file(yaml.as_bytes());
    assert!(parsed.has_errors());
    let yaml = format!(
        "{}x: 1\n",
        (0..200)
            .map(|i| format!("{}k:\n", " ".repeat(i)))
            .collect::<String>()
    );
    assert!(parse_file(yaml.as_bytes()).has_errors());
}

#[test]
fn oversize_files_are_refused_before_parsing() {
    let yaml = format!("# {}\n", "x".repeat(MAX_FILE_BYTES as usize));
    let parsed = parse_file(yaml.as_bytes());
    assert_eq!(parsed.findings.len(), 1);
    assert_eq!(parsed.findings[0].code, "file-too-large");
}

#[test]
fn non_utf8_files_are_refused_at_the_first_bad_byte() {
    let mut bytes = b"apiVersion: trainyard.dev/v1\nkind: Pipe".to_vec();
    bytes.push(0xff);
    let parsed = parse_file(&bytes);
    assert_eq!(parsed.findings[0].code, "not-utf8");
    assert_eq!(
        parsed.findings[0].at,
        At::Position(Position {
            line: 2,
            column: 11
        })
    );
}

#[test]
fn versions_ignore_formatting_and_comments() {
    let a = parse_file(pipeline("  steps: [{name: s, run: [x]}]\n").as_bytes());
    let b = parse_file(
        pipeline("  # a comment\n  steps:\n    - name: s\n      run: [\"x\"]\n").as_bytes(),
    );
    let c = parse_file(pipeline("  steps: [{name: s, run: [y]}]\n").as_bytes());
    assert_eq!(a.documents[0].version, b.documents[0].version);
    assert_ne!(a.documents[0].version, c.documents[0].version);
}

#[test]
fn settings_are_checked() {
    let findings =
        parse_settings(b"policies: [../x.rego, p.txt]\ndefault_timeout: forever\n").findings;
    let codes: Vec<&str> = findings.iter().map(|f| f.code.as_str()).collect();
    assert_eq!(
        codes,
        ["path-escapes", "invalid-policy-path", "invalid-duration"]
    );
    let findings = parse_settings(b"allow_emtpy: true\n").findings;
    assert_eq!(findings[0].code, "unknown-field");
    // The cluster settings decide where Jobs run (the Role is namespaced): a repository
    // that still names a namespace is told so, at the line that names it.
    let findings = parse_settings(b"image: x\nnamespace: ml-training\n").findings;
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].code, "unknown-field");
    assert!(findings[0].message.contains("namespace"), "{findings:?}");
    assert!(
        matches!(&findings[0].at, super::diag::At::Position(p) if p.line == 2),
        "{findings:?}"
    );
    let empty = parse_settings(b"");
    assert!(empty.findings.is_empty());
    assert_eq!(empty.settings, Settings::default());
}

// Syntax errors the parser lets through (issue 11): each at its own line and column, and
// nothing else for the file, since what the parser made of a misplaced line is not what its
// author meant.

#[test]
fn a_quoted_scalar_continued_left_of_its_block_is_a_syntax_error_there() {
    // The parser folds line 10 into the quoted value, and the step's timeout became
    // "1h " with a duration error on line 9.
    let yaml = pipeline("  steps:\n    - name: train\n      run: [x]\n      timeout: \"1h\n  \"\n");
    let diags = diagnostics(&yaml);
    assert_eq!(
        diags
            .iter()
            .map(|d| (d.line, d.column, d.code.as_str()))
            .collect::<Vec<_>>(),
        [(10, 3, "yaml")]
    );
    assert_eq!(
        diags[0].message,
        "this line is indented less than the block it belongs to (line 7); it continues the \
         quoted scalar that starts on line 9"
    );
    assert_eq!(
        diags[0].hint.as_deref(),
        Some("indent it further than line 7, or close the quoted scalar on the line it starts")
    );
}

#[test]
fn a_flow_collection_continued_left_of_its_block_is_a_syntax_error_there() {
    // Line 9 reads like `spec`'s next key, but the unclosed `[` takes it into `run`.
    let yaml =
        pipeline("  steps:\n    - name: train\n      run: [python3, train.py,\n  image: other]\n");
    let diags = diagnostics(&yaml);
    assert_eq!(
        diags
            .iter()
            .map(|d| (d.line, d.column, d.code.as_str()))
            .collect::<Vec<_>>(),
        [(9, 3, "yaml")]
    );
    assert!(
        diags[0]
            .message
            .contains("continues the flow sequence that starts on line 8"),
        "{diags:?}"
    );
    // The same with a flow mapping, and with a line the parser took silently.
    let yaml = pipeline(
        "  steps:\n    - name: train\n      run: [x]\n      resources: {cpu: 1,\n memory: 2Gi}\n",
    );
    assert_eq!(check(&yaml), [(10, 2, "yaml".to_owned())]);
    let yaml = pipeline("  steps:\n    - name: train\n      run: [python3,\n    train.py]\n");
    assert_eq!(check(&yaml), [(9, 5, "yaml".to_owned())]);
}

#[test]
fn a_tab_in_front_of_a_nested_block_is_a_syntax_error_at_the_tab() {
    let yaml = pipeline(
        "  steps:\n    - name: train\n      run: [x]\n      resources:\n        \tcpu: 1\n",
    );
    let diags = diagnostics(&yaml);
    assert_eq!(
        diags
            .iter()
            .map(|d| (d.line, d.column, d.code.as_str()))
            .collect::<Vec<_>>(),
        [(10, 9, "yaml")]
    );
    assert_eq!(
        diags[0].message,
        "a tab indents this block; YAML indents with spaces only"
    );
    let yaml = pipeline("  steps:\n    -\tname: train\n      run: [x]\n");
    assert_eq!(check(&yaml), [(7, 6, "yaml".to_owned())]);
    // Tabs the parser refuses itself keep its message and position.
    let yaml =
        pipeline("  steps:\n    - name: train\n      run: [x]\n      resources:\n      \tcpu: 1\n");
    assert_eq!(check(&yaml), [(10, 8, "yaml".to_owned())]);
    let yaml = pipeline("  steps:\n\t- name: train\n");
    assert_eq!(check(&yaml), [(7, 2, "yaml".to_owned())]);
    let yaml = pipeline("  steps:\n    - name: train\n      run: [x]\n\ttimeout: 1h\n");
    assert_eq!(check(&yaml), [(9, 2, "yaml".to_owned())]);
}

#[test]
fn a_file_with_a_syntax_error_reports_only_its_syntax_errors() {
    let yaml = format!(
        "{}---\n{}",
        pipeline("  steps: [{name: s, run: [x], typo: 1}]\n"),
        pipeline("  steps:\n    - name: s\n      run: [x,\n y]\n").replace("churn", "other")
    );
    assert_eq!(check(&yaml), [(16, 2, "yaml".to_owned())]);
    let parsed = parse_file(yaml.as_bytes());
    assert!(parsed.documents.is_empty());
    let findings =
        parse_settings(b"policies: [a.rego,\n  b.rego]\nbase:\n  image: [x,\n y]\n").findings;
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(
        findings[0].at,
        At::Position(Position { line: 5, column: 2 })
    );
}

#[test]
fn under_indented_block_lines_stay_the_parser_s_errors_at_their_place() {
    // A key one column left of its siblings in a step.
    let yaml = pipeline("  steps:\n    - name: a\n      run: [x]\n     outputs: [o]\n");
    assert_eq!(check(&yaml), [(9, 6, "yaml".to_owned())]);
    // A sequence item left of its siblings.
    let yaml = pipeline("  steps:\n    - name: a\n      run:\n        - x\n       - y\n");
    assert_eq!(check(&yaml), [(10, 8, "yaml".to_owned())]);
    // A plain scalar continued left of its key.
    let yaml = pipeline("  steps:\n    - name: a\n      run: [x]\n      timeout: 1h\n     30m\n");
    assert_eq!(check(&yaml), [(10, 6, "yaml".to_owned())]);
}

#[test]
fn duplicate_keys_point_at_the_second_key() {
    let yaml = pipeline("  steps: [{name: s, run: [x]}]\n  steps: []\n");
    assert_eq!(check(&yaml), [(7, 3, "yaml".to_owned())]);
    let yaml = pipeline("  steps:\n    - name: s\n      run: [x]\n      name: t\n");
    assert_eq!(check(&yaml), [(9, 7, "yaml".to_owned())]);
}

#[test]
fn legal_indentation_that_looks_loose_is_accepted() {
    let yaml = pipeline(concat!(
        "  # a comment at the block's indentation\n",
        "# and one at none\n",
        "  steps:\n",
        "  - name: prepare\n", // a sequence at its key's indentation
        "    run:\n",
        "    - python3\n",
        "    - p.py\n",
        "    outputs: [data]\n",
        "  - name: train\n",
        "    needs: [\n",
        "      prepare,\n",
        "# a comment inside a flow collection, at column 1\n",
        "    ]\n",
        "    run: [python3, t.py,\n",
        "      '{{ steps.prepare.outputs.data }}']\n",
        "    env: {\n",
        "      MODE: \"a long\n",
        "        quoted value\",\n",
        "      NOTE: a plain\n",
        "        value\n",
        "    }\n", // closed at its key's column, as libyaml allows
        "    env_from_secrets: [\n",
        "\n",
        "      creds]\n",
        "    timeout: 1h\n",
        "      30m\n",       // a plain scalar continued further right
        "    retries:\t2\n", // a tab separating a value
        "  model:\n",
        "    name: >-\n",
        "      churn\n",
        "      model\n",
        "    artifact: steps.train.outputs.model\n",
    ));
    let parsed = parse_file(yaml.as_bytes());
    let findings: Vec<_> = parsed
        .findings
        .iter()
        .filter(|f| f.code == "yaml")
        .collect();
    assert_eq!(findings, Vec::<&Finding>::new());
    assert_eq!(parsed.documents.len(), 1, "{:?}", parsed.findings);
}

#[test]
fn finally_steps_may_read_run_state_and_any_dag_step_s_outputs() {
    let yaml = pipeline(
        "  steps:\n    - {name: prepare, run: [a], outputs: [data]}\n    - {name: train, needs: [prepare], run: [b]}\n  finally:\n    - {name: report, run: [c, '{{ run.state }}', '{{ steps.prepare.outputs.data }}'], env: {STATE: '{{ run.state }}'}}\n",
    );
    assert_eq!(check(&yaml), []);
}

#[test]
fn finally_steps_cannot_be_needed_use_needs_or_reuse_a_name() {
    let yaml = pipeline(
        "  steps:\n    - {name: train, needs: [report], run: [a]}\n  finally:\n    - {name: report, needs: [train], run: [b]}\n    - {name: train, run: [c]}\n",
    );
    let diags = diagnostics(&yaml);
    let found: Vec<(u32, u32, &str)> = diags
        .iter()
        .map(|d| (d.line, d.column, d.code.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (7, 29, "needs-finally-step"),
            (9, 29, "finally-needs"),
            (10, 14, "duplicate-step"),
        ]
    );
    assert_eq!(
        diags[0].message,
        "step \"train\" needs finally step \"report\", which runs only after the DAG has ended"
    );
}

#[test]
fn run_state_and_finally_outputs_are_not_for_dag_steps() {
    let yaml = pipeline(
        "  steps:\n    - {name: train, run: [a, '{{ run.state }}', '{{ steps.report.outputs.x }}']}\n  finally:\n    - {name: report, run: [b, '{{ steps.train.outputs.nope }}'], outputs: [x]}\n",
    );
    assert_eq!(
        check(&yaml),
        [
            (7, 30, "run-state-outside-finally".to_owned()),
            (7, 49, "reads-finally-step".to_owned()),
            (9, 31, "unknown-output".to_owned()),
        ]
    );
}

#[test]
fn cache_settings_are_checked_where_they_are_written() {
    let yaml = pipeline(
        "  cache: true\n  cache_max_age: 7 days\n  cache_version: ''\n  steps:\n    - {name: train, run: [a], cache_max_age: soon, cache: false}\n  finally:\n    - {name: report, run: [b], cache: true}\n",
    );
    let mut found = check(&yaml);
    found.sort();
    assert_eq!(
        found,
        [
            (7, 18, "invalid-duration".to_owned()),
            (8, 18, "invalid-cache-version".to_owned()),
            (10, 46, "invalid-duration".to_owned()),
            (12, 39, "cached-finally-step".to_owned()),
        ]
    );
    let fine = pipeline(
        "  cache: true\n  cache_max_age: 7d\n  cache_version: '2'\n  steps:\n    - {name: train, run: [a], cache: false, cache_version: x}\n  finally:\n    - {name: report, run: [b], cache: false}\n",
    );
    assert_eq!(check(&fine), []);
}

#[test]
fn a_matrix_runs_every_combination_the_last_axis_fastest() {
    let yaml = pipeline(
        "  steps:\n    - {name: train, run: [a, '{{ matrix.lr }}', '{{ matrix.seed }}'], matrix: {seed: [1, 2, 3], lr: [0.1, 0.01]}, max_parallel: 2}\n",
    );
    assert_eq!(check(&yaml), []);
    let parsed = crate::spec::parse_file(yaml.as_bytes());
    let Some(crate::spec::Document::Pipeline(p)) =
        parsed.documents.into_iter().next().map(|d| d.document)
    else {
        panic!("a pipeline");
    };
    let train = &p.spec.steps[0];
    assert_eq!(train.instances(), 6);
    assert_eq!(
        train.instance_names(),
        [
            "train.0", "train.1", "train.2", "train.3", "train.4", "train.5"
        ]
    );
    let seen: Vec<(String, String)> = (0..6)
        .map(|i| {
            let c = train.combination(i);
            (c["lr"].to_string(), c["seed"].to_string())
        })
        .collect();
    let pairs = |lr: &str| ["1", "2", "3"].map(|s| (lr.to_owned(), s.to_owned()));
    assert_eq!(seen, [pairs("0.1"), pairs("0.01")].concat());
    assert_eq!(
        p.spec.step("train.4").map(|s| s.name.as_str()),
        Some("train")
    );
    assert_eq!(
        crate::spec::model::instance_of("train.4"),
        ("train", Some(4))
    );
}

#[test]
fn a_matrix_is_checked_where_it_is_written() {
    let yaml = pipeline(
        "  steps:\n    - {name: prep, run: [a], max_parallel: 2}\n    - {name: train, needs: [prep], run: [b, '{{ matrix.rate }}'], matrix: {lr: [0.1, 0.1], deep: [[1]], none: []}, outputs: [model, metrics]}\n  finally:\n    - {name: report, run: [c], matrix: {x: [1]}}\n  model: {name: m, artifact: steps.train.outputs.model, metrics: steps.train.outputs.metrics}\n",
    );
    let mut found = check(&yaml);
    found.sort();
    let found_codes: Vec<&str> = found.iter().map(|(_, _, c)| c.as_str()).collect();
    assert_eq!(
        found_codes,
        [
            "max-parallel-without-matrix",
            "unknown-matrix-value",
            "duplicate-matrix-value",
            "invalid-matrix-value",
            "empty-matrix-axis",
            "matrix-in-finally",
            "matrix-model-without-select",
        ],
        "{found:?}"
    );
    let big = pipeline(
        "  steps:\n    - {name: train, run: [a], matrix: {a: [1, 2, 3, 4, 5], b: [1, 2, 3, 4, 5], c: [1, 2, 3]}}\n",
    );
    assert_eq!(codes(&big), ["too-many-instances"]);
    let plain = pipeline(
        "  steps:\n    - {name: train, run: [a], outputs: [model, metrics]}\n  model: {name: m, artifact: steps.train.outputs.model, metrics: steps.train.outputs.metrics, select: {metric: accuracy}}\n",
    );
    assert_eq!(codes(&plain), ["select-without-matrix"]);
    let elsewhere = pipeline(
        "  steps:\n    - {name: train, run: [a], outputs: [model], matrix: {lr: [1, 2]}}\n    - {name: eval, needs: [train], run: [b], outputs: [metrics]}\n  model: {name: m, artifact: steps.train.outputs.model, metrics: steps.eval.outputs.metrics, select: {metric: accuracy}}\n",
    );
    assert_eq!(codes(&elsewhere), ["select-metrics-elsewhere"]);
}
