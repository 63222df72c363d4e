//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! The object is copied to `$OUT_DIR/tracer.bpf.o`, which the collector
//! includes with `aya::include_bytes_aligned!`. When it has not been built
//! yet an empty file is written instead, so that `cargo check` and
//! `cargo clippy` work on a fresh clone; the binary then refuses to run.
//! `LOCKTRACE_EBPF_OBJECT` overrides the object's path.

use std::{env, fs, path::PathBuf};

const OBJECT_ENV: &str = "LOCKTRACE_EBPF_OBJECT";

fn main() {
    println!("cargo:rerun-if-env-changed={OBJECT_ENV}");
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let object = match env::var_os(OBJECT_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => manifest_dir
            .parent()
            .expect("tracer/ is inside the workspace")
            .join("tracer-ebpf/target/bpfel-unknown-none/release/tracer-ebpf"),
    };
    println!("cargo:rerun-if-changed={}", object.display());

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("tracer.bpf.o");
    if object.is_file() {
        fs::copy(&object, &out)
            .unwrap_or_else(|e| panic!("copying {} to {}: {e}", object.display(), out.display()));
    } else {
        fs::write(&out, []).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
        println!(
            "cargo:warning=no eBPF object at {}: locktrace will refuse to run until \
             `cargo xtask build-ebpf` is run",
            object.display()
        );
    }
}
