//! Deployment files: the container image builds the release the README documents (CI has no
//! container engine, so the Dockerfile is checked as text), and the Kubernetes example uses
//! the image that build makes.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The words of the first `cargo install` command of `text` outside inline code (a shell or
/// Dockerfile line), without the flags that only choose where its output goes.
fn install_command(text: &str, file: &str) -> Vec<String> {
    let line = text
        .lines()
        .find(|l| l.contains("cargo install") && !l.contains('`'))
        .unwrap_or_else(|| panic!("{file}: no cargo install line"));
    let from = line.find("cargo install").unwrap();
    let words: Vec<&str> = line[from..]
        .split('#')
        .next()
        .unwrap()
        .split_whitespace()
        .take_while(|w| *w != "\\")
        .collect();
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        match w {
            "--root" | "--target-dir" => {
                it.next();
            }
            "--quiet" => {}
            w => out.push(w.to_string()),
        }
    }
    out
}

#[test]
fn the_image_builds_the_release_the_readme_documents() {
    let readme = read("README.md");
    let docker = read("Dockerfile");
    let want = install_command(&readme, "README.md");
    assert_eq!(want, ["cargo", "install", "--path", "crates/seli-cli", "--locked"]);
    assert_eq!(install_command(&docker, "Dockerfile"), want, "Dockerfile");
    assert_eq!(install_command(&read(".ci/run"), ".ci/run"), want, ".ci/run");

    // Built with the Rust image of the workspace's rust-version.
    let manifest = read("Cargo.toml");
    let rust_version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap();
    assert!(docker.contains(&format!("ARG RUST_VERSION={rust_version}\n")), "RUST_VERSION");
    let froms: Vec<&str> = docker.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(
        froms[0].starts_with("FROM rust:${RUST_VERSION}-slim") && froms[0].ends_with(" AS build")
    );
    // The last stage (what `docker build -t seli .` tags): a slim base, the installed binary,
    // a non-root user, seli as the entrypoint.
    let last = docker.rsplit("\nFROM ").next().unwrap();
    assert!(
        last.starts_with("debian:") && last.lines().next().unwrap().contains("-slim"),
        "{last}"
    );
    let root_dir = docker
        .lines()
        .find(|l| l.contains("cargo install"))
        .and_then(|l| l.split("--root ").nth(1))
        .map(|r| r.split_whitespace().next().unwrap().to_string())
        .expect("the build installs under --root");
    assert!(last.contains(&format!("COPY --from=build {root_dir}/bin/seli /usr/local/bin/seli")));
    let user =
        last.lines().find_map(|l| l.strip_prefix("USER ")).expect("the runtime stage sets a USER");
    assert!(user != "root" && user != "0", "USER {user}");
    assert!(last.contains("useradd --system --uid 10001") && user == "seli");
    assert!(last.contains("ENTRYPOINT [\"seli\"]"));
    // The wheel stage exports only the wheel.
    assert!(docker.contains("FROM scratch AS wheel\n"));

    // The build context leaves out build outputs and datasets.
    let ignore = read(".dockerignore");
    for dir in ["target/", "data/", "runs/", ".git/"] {
        assert!(ignore.lines().any(|l| l == dir), ".dockerignore lacks {dir}");
    }

    // README and the Kubernetes example use the image that build makes.
    assert!(
        readme.contains("docker build -t seli .\n") || readme.contains("docker build -t seli . ")
    );
    let yaml = read("examples/k8s-sweep-job.yaml");
    assert!(yaml.contains("image: seli:latest"), "examples/k8s-sweep-job.yaml");
    assert!(yaml.contains("docker build -t seli ."), "the example says how to build its image");
}
