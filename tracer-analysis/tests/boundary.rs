//! The detection core stays pure: none of the collector's kernel, async,
//! `/proc` or symbolization crates may enter its dependency tree (the crate
//! boundary is what keeps the layering from growing back).

use std::process::Command;

#[test]
fn no_kernel_async_proc_or_symbolizer_crates() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "tracer-analysis",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        crates.contains(&"tracer-common"),
        "unexpected tree:\n{tree}"
    );
    for banned in [
        "aya", "aya-obj", "tokio", "procfs", "blazesym", "framehop", "libc", "nix",
    ] {
        assert!(
            !crates.contains(&banned),
            "{banned} is in tracer-analysis's dependency tree:\n{tree}"
        );
    }
}
