//! Builds the XDP object (smtp-edge-ebpf) with the nightly toolchain for
//! bpfel-unknown-none and exposes its path to the crate, which embeds it.
//!
//! The nested cargo uses its own target directory (target/ebpf) so it neither
//! deadlocks on the outer build's lock nor rebuilds on every outer profile.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("workspace root").to_path_buf();
    let ebpf = root.join("smtp-edge-ebpf");
    let common = root.join("smtp-edge-common");
    for dir in [ebpf.join("src"), common.join("src")] {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        ebpf.join("Cargo.toml").display()
    );
    println!("cargo:rerun-if-env-changed=SMTP_EDGE_EBPF_DIR");

    // xtask may have built the objects already and tells us where.
    let out_dir = match env::var_os("SMTP_EDGE_EBPF_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => build(&root),
    };
    for (var, name) in [
        ("SMTP_EDGE_GATE_OBJECT", "smtp-edge-ebpf"),
        ("SMTP_EDGE_BASELINE_OBJECT", "smtp-edge-baseline"),
    ] {
        let path = out_dir.join(name);
        if !path.is_file() {
            panic!(
                "eBPF object {} is missing; run `cargo xtask build` (it installs the toolchain it needs)",
                path.display()
            );
        }
        println!("cargo:rustc-env={var}={}", path.display());
    }
}

fn build(root: &Path) -> PathBuf {
    let target_dir = root.join("target").join("ebpf");
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--release",
        "--package",
        "smtp-edge-ebpf",
    ])
    .args([
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--target-dir",
    ])
    .arg(&target_dir)
    .current_dir(root);
    // Do not leak the outer (stable, host) build's settings into the nested build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("CARGO_") && key != "CARGO_HOME"
            || key.starts_with("RUSTC")
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
            || key == "RUSTUP_TOOLCHAIN"
        {
            cmd.env_remove(&key);
        }
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run `rustup run nightly cargo` to build the eBPF object: {e}; run `cargo xtask build`")
    });
    if !status.success() {
        panic!(
            "building smtp-edge-ebpf failed ({status}); `cargo xtask build` installs nightly rust-src and bpf-linker"
        );
    }
    target_dir.join("bpfel-unknown-none").join("release")
}
