//! The Helm chart rendered by the real helm (installed into the tools cache by
//! `tests/helm/check.sh tools`, so no cluster is needed).

use std::{process::Command, sync::OnceLock};

/// The helm binary check.sh installed.
pub fn helm() -> &'static str {
    static HELM: OnceLock<String> = OnceLock::new();
    HELM.get_or_init(|| {
        let script = super::repo_root().join("tests/helm/check.sh");
        let output = Command::new(&script)
            .arg("tools")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            output.status.success(),
            "tests/helm/check.sh tools could not install helm:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .expect("UTF-8 output")
            .lines()
            .find_map(|line| line.strip_prefix("HELM=").map(str::to_owned))
            .expect("check.sh tools prints HELM=<path>")
    })
}

/// The chart rendered as release `ota` in `namespace` with `values` (a file under
/// tests/helm/values/) and `sets`: the YAML stream as helm printed it (comments included).
pub fn render_text(namespace: &str, values: &str, sets: &[&str]) -> String {
    let root = super::repo_root();
    let mut command = Command::new(helm());
    command
        .args([
            "template",
            "ota",
            "--namespace",
            namespace,
            "--kube-version",
            "1.29.0",
        ])
        .arg(root.join("charts/ota-operator"))
        .arg("-f")
        .arg(root.join("tests/helm/values").join(values));
    for set in sets {
        command.args(["--set", set]);
    }
    let output = command.output().expect("helm runs");
    assert!(
        output.status.success(),
        "helm template with {values} {sets:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// The documents of a rendered YAML stream.
pub fn documents(stream: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple::<serde_json::Value>(stream)
        .expect("helm renders a YAML stream")
        .into_iter()
        .filter(|document| !document.is_null())
        .collect()
}

/// The chart rendered as release `ota` in `namespace` with `values` and `sets`, as documents.
pub fn render(namespace: &str, values: &str, sets: &[&str]) -> Vec<serde_json::Value> {
    documents(&render_text(namespace, values, sets))
}

/// The objects of `kind` among `documents`.
pub fn objects<K: serde::de::DeserializeOwned>(documents: &[serde_json::Value], kind: &str) -> Vec<K> {
    documents
        .iter()
        .filter(|document| document["kind"] == kind)
        .map(|document| {
            serde_json::from_value(document.clone()).unwrap_or_else(|e| panic!("a {kind} as rendered: {e}"))
        })
        .collect()
}
