//! Build script: hands the git commit the binary is built from to the code
//! as `SLUICE_COMMIT` (the `commit` label of `sluice_build_info`).
//! An explicit `SLUICE_COMMIT` in the environment wins (a build from a
//! tarball or a container context without `.git`); without either the code
//! says `unknown`. The script is found by its name: a build context that
//! leaves it out (the Dockerfile copies `src/` only) builds without it.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=SLUICE_COMMIT");
    if let Ok(commit) = std::env::var("SLUICE_COMMIT") {
        println!("cargo:rustc-env=SLUICE_COMMIT={commit}");
        return;
    }
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return;
    };
    // Built again when HEAD moves: a new commit, or a checkout of another branch.
    for path in ["HEAD", "packed-refs"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(p) = git(&["rev-parse", "--git-path", &branch]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    println!("cargo:rustc-env=SLUICE_COMMIT={commit}");
}
