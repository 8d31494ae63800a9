//! The Kubernetes examples' ConfigMaps against the rest of the repository:
//! every sluice config in one (a `*.yaml` key with top-level `routes:`)
//! passes `sluice check`, and every nftables file in one that has the name of
//! a file under `examples/nftables/` is that file, byte for byte, so the
//! rules a pod loads are the rules the namespace tests load.
//! (`kubernetes-validate` checks the manifests' schema in `.ci/run`.)

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::harness;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every `(manifest, key, value)` of the `data:` of every ConfigMap under examples/kubernetes/.
fn configmap_entries() -> Vec<(PathBuf, String, String)> {
    let dir = Path::new(ROOT).join("examples/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc = serde_yaml::Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if doc.get("kind").and_then(serde_yaml::Value::as_str) != Some("ConfigMap") {
                continue;
            }
            let Some(data) = doc.get("data").and_then(serde_yaml::Value::as_mapping) else { continue };
            for (k, v) in data {
                if let (Some(k), Some(v)) = (k.as_str(), v.as_str()) {
                    out.push((file.clone(), k.to_owned(), v.to_owned()));
                }
            }
        }
    }
    out
}

fn rel(p: &Path) -> String {
    p.strip_prefix(ROOT).unwrap_or(p).display().to_string()
}

#[test]
fn configmap_sluice_configs_pass_sluice_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    for (file, key, value) in configmap_entries() {
        if !key.ends_with(".yaml") || !value.lines().any(|l| l.starts_with("routes:")) {
            continue;
        }
        let path = dir.path().join(format!("{}-{key}", checked.len()));
        std::fs::write(&path, &value).expect("write the config");
        let (code, _, said) = harness::run(&["check", "-c", &path.display().to_string()]);
        if code != 0 {
            failures.push(format!("{} data.{key}: exit {code}: {}", rel(&file), said.trim()));
        }
        checked.push(format!("{} data.{key}", rel(&file)));
    }
    eprintln!("checked {}:\n  {}", checked.len(), checked.join("\n  "));
    assert!(checked.len() >= 2, "the ConfigMaps of configmap.yaml and transparent-sidecar.yaml: {checked:?}");
    assert!(
        failures.is_empty(),
        "{} of {} fail `sluice check`:\n  {}",
        failures.len(),
        checked.len(),
        failures.join("\n  ")
    );
}

#[test]
fn configmap_rule_files_are_the_shipped_ones() {
    let shipped = Path::new(ROOT).join("examples/nftables");
    let mut compared = Vec::new();
    let mut problems = Vec::new();
    for (file, key, value) in configmap_entries() {
        let original = shipped.join(&key);
        if !key.ends_with(".nft") || !original.is_file() {
            continue;
        }
        let want = std::fs::read_to_string(&original).unwrap_or_else(|e| panic!("{}: {e}", original.display()));
        if value != want {
            let line = value.lines().zip(want.lines()).position(|(a, b)| a != b).map_or_else(
                || format!("they differ in length ({} and {} lines)", value.lines().count(), want.lines().count()),
                |i| format!("first difference on line {}", i + 1),
            );
            problems.push(format!("{} data.{key} is not {}: {line}", rel(&file), rel(&original)));
        }
        compared.push(format!("{} data.{key}", rel(&file)));
    }
    eprintln!("compared {}:\n  {}", compared.len(), compared.join("\n  "));
    assert!(
        compared.iter().any(|c| c.ends_with("outbound.nft")) && compared.iter().any(|c| c.ends_with("inbound.nft")),
        "transparent-sidecar.yaml carries outbound.nft and inbound.nft: {compared:?}"
    );
    assert!(problems.is_empty(), "copy the shipped rules into the ConfigMap:\n  {}", problems.join("\n  "));
}
