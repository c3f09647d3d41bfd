//! The configuration fixtures: every file in `valid/` loads, every file in `invalid/`
//! fails with exactly the errors its `# expect:` lines list.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use portico_config::{LoadError, load_file, parse};
use std::path::{Path, PathBuf};

fn fixtures(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

#[test]
fn valid_fixtures_load() {
    for file in fixtures("valid") {
        if let Err(e) = load_file(&file) {
            panic!("{}: {e}", file.display());
        }
    }
}

#[test]
fn invalid_fixtures_report_every_error_with_its_path() {
    for file in fixtures("invalid") {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut expected: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .map(str::to_owned)
            .collect();
        let Err(LoadError::Invalid { errors, .. }) = load_file(&file) else {
            panic!("{} should be invalid", file.display());
        };
        let mut got: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        expected.sort();
        got.sort();
        assert_eq!(got, expected, "{}", file.display());
    }
}

#[test]
fn syntax_errors_name_the_line() {
    let err = parse("[functions.a]\ncommand = [\"x\"\n", "test.toml").unwrap_err();
    let LoadError::Syntax { message, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(message.contains("line 2"), "{message}");
}

#[test]
fn defaults_are_lambdas() {
    let c = parse("[functions.f]\ncommand = [\"/bin/true\"]\n", "t").unwrap();
    let f = &c.functions["f"];
    assert_eq!(
        (f.timeout_seconds, f.memory_size_mb, f.handler()),
        (3, 128, "bootstrap")
    );
}

#[test]
fn health_checks_default_to_albs_per_target_type() {
    use portico_config::{HealthCheck, TargetType};
    let http = HealthCheck::default().resolve(TargetType::Ip);
    assert_eq!(
        (
            http.enabled,
            http.interval.as_secs(),
            http.timeout.as_secs()
        ),
        (true, 30, 6)
    );
    assert_eq!((http.healthy_threshold, http.unhealthy_threshold), (5, 2));
    let lambda = HealthCheck::default().resolve(TargetType::Lambda);
    assert_eq!(
        (
            lambda.enabled,
            lambda.interval.as_secs(),
            lambda.timeout.as_secs()
        ),
        (false, 35, 30)
    );
    assert_eq!(
        (lambda.healthy_threshold, lambda.unhealthy_threshold),
        (5, 5)
    );
}

#[test]
fn a_function_without_runtime_is_provided_al2023() {
    let c = parse("[functions.f]\ncommand = [\"/bin/true\"]\n", "t").unwrap();
    assert_eq!(c.functions["f"].runtime.to_string(), "provided.al2023");
    let c = parse(
        "[functions.f]\nruntime = \"provided\"\ncommand = [\"/bin/true\"]\n",
        "t",
    )
    .unwrap();
    assert_eq!(c.functions["f"].runtime.to_string(), "provided");
}

#[test]
fn oversized_file_is_refused_before_parsing() {
    let dir = std::env::temp_dir().join(format!("portico-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("huge.toml");
    let line = "# padding padding padding padding padding padding padding padding\n";
    std::fs::write(&path, line.repeat((5 * 1024 * 1024) / line.len())).unwrap();
    let err = load_file(&path).unwrap_err();
    assert!(err.to_string().contains("over the limit"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unreadable_file_names_the_path() {
    let err = load_file(Path::new("/nonexistent/portico.toml")).unwrap_err();
    assert!(matches!(err, LoadError::Read { .. }));
    assert!(err.to_string().contains("/nonexistent/portico.toml"));
}

#[test]
fn api_key_files_are_checked_against_the_inline_keys() {
    let config = parse(
        "[api_keys]\nfile = \"keys.toml\"\nkeys = [{ name = \"a\", value = \"inline-key-0123456789ab\" }]\n",
        "test.toml",
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("portico-keyfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keys.toml");
    std::fs::write(
        &file,
        "[[keys]]\nname = \"a\"\nvalue = \"inline-key-0123456789ab\"\n\n[[keys]]\nvalue = \"short\"\nusage_plan = \"none\"\n",
    )
    .unwrap();
    let Err(LoadError::Invalid { errors, .. }) = portico_config::load_api_key_file(&file, &config)
    else {
        panic!("the key file should be refused");
    };
    let mut got: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    got.sort();
    assert_eq!(
        got,
        [
            "keys[0].name: another key is named \"a\"",
            "keys[0].value: this key is listed twice",
            "keys[1].usage_plan: no usage plan named \"none\"",
            "keys[1].value: an API key is 20-128 printable ASCII characters without spaces",
        ]
    );
    // A key file is bounded like the config file.
    let huge = format!("# {}\n", "x".repeat(5 * 1024 * 1024));
    std::fs::write(&file, huge).unwrap();
    let Err(LoadError::Invalid { errors, .. }) = portico_config::load_api_key_file(&file, &config)
    else {
        panic!("an oversize key file should be refused");
    };
    assert!(
        errors[0].to_string().contains("over the limit"),
        "{errors:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
