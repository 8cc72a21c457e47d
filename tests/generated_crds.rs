//! The checked-in CRDs (crds/ and the Helm chart's crds/) are exactly what `ota crds` generates.
//! Regenerate with `cargo run -- crds --out crds && cargo run -- crds --out charts/ota-operator/crds`.

use std::{collections::BTreeMap, path::Path, process::Command};

use ota_operator::crdgen;

fn files_in(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).expect("a readable file"))
        })
        .collect()
}

fn assert_matches_generated(folder: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(folder);
    let generated: BTreeMap<String, String> = crdgen::render_all()
        .expect("the CRDs render")
        .into_iter()
        .map(|crd| (crd.file_name, crd.yaml))
        .collect();
    let checked_in = files_in(&dir);
    assert_eq!(
        checked_in.keys().collect::<Vec<_>>(),
        generated.keys().collect::<Vec<_>>(),
        "{folder} holds other files than the generated CRDs; run `cargo run -- crds --out {folder}`"
    );
    for (name, yaml) in &generated {
        assert!(
            &checked_in[name] == yaml,
            "{folder}/{name} differs from the generated CRD; run `cargo run -- crds --out {folder}`"
        );
    }
}

#[test]
fn crds_folder_matches_the_types() {
    assert_matches_generated("crds");
}

#[test]
fn helm_chart_crds_match_the_types() {
    assert_matches_generated("charts/ota-operator/crds");
}

#[test]
fn ota_crds_prints_every_crd_as_one_yaml_stream() {
    let output = Command::new(env!("CARGO_BIN_EXE_ota"))
        .arg("crds")
        .output()
        .expect("ota runs");
    assert!(
        output.status.success(),
        "ota crds failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(&stdout).expect("a YAML stream");
    let names: Vec<&str> = documents
        .iter()
        .filter_map(|d| d["metadata"]["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "apps.ota.dev",
            "channels.ota.dev",
            "bundles.ota.dev",
            "rollouts.ota.dev"
        ]
    );
    let expected: String = crdgen::render_all()
        .unwrap()
        .iter()
        .map(|c| c.yaml.as_str())
        .collect();
    assert_eq!(stdout, expected);
}

#[test]
fn ota_crds_out_writes_one_file_per_kind() {
    let dir = std::env::temp_dir().join(format!("ota-crds-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let output = Command::new(env!("CARGO_BIN_EXE_ota"))
        .args(["crds", "--out"])
        .arg(&dir)
        .output()
        .expect("ota runs");
    assert!(
        output.status.success(),
        "ota crds --out failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let written = files_in(&dir);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(
        written.keys().collect::<Vec<_>>(),
        [
            "apps.ota.dev.yaml",
            "bundles.ota.dev.yaml",
            "channels.ota.dev.yaml",
            "rollouts.ota.dev.yaml"
        ]
    );
}

#[test]
fn ota_crds_out_reports_an_unwritable_folder_in_one_line() {
    let file = std::env::temp_dir().join(format!("ota-crds-not-a-dir-{}", std::process::id()));
    std::fs::write(&file, "a file, not a folder").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ota"))
        .args(["crds", "--out"])
        .arg(&file)
        .output()
        .expect("ota runs");
    std::fs::remove_file(&file).ok();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("ota: cannot write "),
        "unexpected error: {stderr}"
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line expected: {stderr}"
    );
}

#[test]
fn ota_version_prints_the_crate_version() {
    let output = Command::new(env!("CARGO_BIN_EXE_ota"))
        .arg("version")
        .output()
        .expect("ota runs");
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("ota {}\n", env!("CARGO_PKG_VERSION"))
    );
}
