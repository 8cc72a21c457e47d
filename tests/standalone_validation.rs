//! Standalone mode refuses what the API server refuses (tests/crd_api_server.rs holds the
//! server's side): every file of examples/invalid/ is refused by the folder loader with the
//! message of its `# expect-error:` line, the documents before its last accepted as the
//! versions it updates; every valid example loads with no problem.

mod support;

use std::path::PathBuf;

use ota_operator::standalone::load::{self, Loaded};
use support::{expected_error, yaml_files};

/// The YAML files directly in `dir` (not in its subfolders), sorted.
fn top_level_yaml(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(support::repo_root().join(dir))
        .unwrap_or_else(|e| panic!("cannot read {dir}: {e}"))
        .map(|entry| entry.expect("a readable entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Loads `files` as a folder of their own, as `ota standalone` would.
fn load_as_folder(files: &[PathBuf]) -> Loaded {
    let dir = tempfile::tempdir().expect("a temporary folder");
    for file in files {
        std::fs::copy(file, dir.path().join(file.file_name().expect("a file name")))
            .expect("the example copies");
    }
    load::load(dir.path()).expect("the folder reads")
}

fn served(loaded: &Loaded) -> usize {
    loaded.apps.len() + loaded.channels.len() + loaded.bundles.len() + loaded.rollouts.len()
}

#[test]
fn every_invalid_example_is_refused_with_its_stated_message() {
    let files = yaml_files("examples/invalid", None);
    assert!(
        files.len() >= 30,
        "examples/invalid holds one file per rule, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable");
        let expected = expected_error(file, &text);
        let expected = expected.as_str();
        let documents: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(&text).expect("the example is YAML");
        let objects = documents.iter().filter(|d| !d.is_null()).count();
        let loaded = load_as_folder(std::slice::from_ref(file));
        let name = file.file_name().unwrap().to_string_lossy();
        match loaded.problems.as_slice() {
            [problem] if problem.contains(expected) => {}
            problems => failures.push(format!(
                "{name}: expected one problem naming '{expected}', got {problems:#?}"
            )),
        }
        // The last document is the refused one; those before it are accepted.
        if served(&loaded) != objects - 1 {
            failures.push(format!(
                "{name}: served {} of {objects} objects, expected {}",
                served(&loaded),
                objects - 1
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "invalid examples not refused as stated:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_valid_example_loads_with_no_problem() {
    let folders = [
        ("examples", top_level_yaml("examples")),
        ("examples/standalone", top_level_yaml("examples/standalone")),
    ];
    for (folder, files) in folders {
        assert!(!files.is_empty(), "{folder} holds examples");
        // Loading reads only the YAML (a Bundle's `source.path` is read when it syncs).
        let loaded = load_as_folder(&files);
        assert!(loaded.problems.is_empty(), "{folder}: {:#?}", loaded.problems);
        assert!(
            served(&loaded) >= files.len(),
            "{folder}: served {}",
            served(&loaded)
        );
    }
}
