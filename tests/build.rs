//! Compiles the C fixtures in `fixtures/` with gcc (C++ ones, `.cc`, with
//! g++), each in two variants:
//! `NAME_fp` (`-fno-omit-frame-pointer`) and `NAME_nofp` (`-fomit-frame-pointer`),
//! into OUT_DIR, and exports that directory as `FIXTURE_DIR`. A fixture may
//! add flags with a line `/* cflags: FLAGS */`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const VARIANTS: &[(&str, &str)] = &[
    ("fp", "-fno-omit-frame-pointer"),
    ("nofp", "-fomit-frame-pointer"),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let fixtures = manifest_dir.join("fixtures");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("fixtures");
    fs::create_dir_all(&out_dir).expect("create fixture output dir");

    println!("cargo:rerun-if-changed=build.rs");
    // The directory itself, so that adding a fixture reruns the build script.
    println!("cargo:rerun-if-changed={}", fixtures.display());

    let mut sources: Vec<PathBuf> = fs::read_dir(&fixtures)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", fixtures.display()))
        .map(|entry| entry.expect("read fixtures dir").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "c" || ext == "cc"))
        .collect();
    sources.sort();
    assert!(!sources.is_empty(), "no fixtures in {}", fixtures.display());

    for source in &sources {
        println!("cargo:rerun-if-changed={}", source.display());
        let stem = source
            .file_stem()
            .unwrap()
            .to_str()
            .expect("UTF-8 fixture name");
        for (suffix, fp_flag) in VARIANTS {
            compile(source, &out_dir.join(format!("{stem}_{suffix}")), fp_flag);
        }
    }

    // Rust fixtures (futex-based locks of their own), built with the
    // compiler that builds the tests, as `NAME` (no variants).
    let rust_dir = fixtures.join("rust");
    println!("cargo:rerun-if-changed={}", rust_dir.display());
    if let Ok(dir) = fs::read_dir(&rust_dir) {
        for entry in dir {
            let source = entry.expect("read rust fixtures dir").path();
            if source.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            println!("cargo:rerun-if-changed={}", source.display());
            let stem = source.file_stem().unwrap().to_str().expect("UTF-8 name");
            compile_rust(&source, &out_dir.join(stem));
        }
    }

    println!("cargo:rustc-env=FIXTURE_DIR={}", out_dir.display());

    let embed_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("embed");
    build_embed_hosts(&manifest_dir.join("python/embed_host.c"), &embed_dir);
    println!("cargo:rustc-env=EMBED_HOST_DIR={}", embed_dir.display());
}

/// `$(pyenv root)/versions`, where the image's CPythons 2.7 to 3.13 are.
fn pyenv_versions() -> PathBuf {
    let root = env::var_os("PYENV_ROOT").unwrap_or_else(|| "/root/.pyenv".into());
    PathBuf::from(root).join("versions")
}

/// The mod_wsgi shape for each pyenv CPython: `embed_host.c` linked with
/// that version's libpython, as `EMBED_DIR/VERSION/embed_host`. A version
/// that does not build is said (a warning) and has no host: the test that
/// needs it fails, naming it.
fn build_embed_hosts(source: &Path, embed_dir: &Path) {
    let versions = pyenv_versions();
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-changed={}", versions.display());
    let Ok(dir) = fs::read_dir(&versions) else {
        return;
    };
    for entry in dir.flatten() {
        let prefix = entry.path();
        let config = prefix.join("bin/python-config");
        if !config.exists() {
            continue;
        }
        let out = embed_dir.join(entry.file_name());
        fs::create_dir_all(&out).expect("create embed host dir");
        if let Err(e) = build_embed_host(source, &prefix, &config, &out.join("embed_host")) {
            println!(
                "cargo:warning=no embedding host for {}: {e}",
                prefix.display()
            );
        }
    }
}

fn build_embed_host(
    source: &Path,
    prefix: &Path,
    config: &Path,
    output: &Path,
) -> Result<(), String> {
    let flags = |args: &[&str]| -> Option<Vec<String>> {
        let out = Command::new(config).args(args).output().ok()?;
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(String::from)
                .collect()
        })
    };
    let cflags = flags(&["--cflags"]).ok_or("python-config --cflags failed")?;
    // 3.8+ links libpython into programs with --embed only; older
    // python-configs do not know the option.
    let ldflags = flags(&["--ldflags", "--embed"])
        .or_else(|| flags(&["--ldflags"]))
        .ok_or("python-config --ldflags failed")?;
    let mut cmd = Command::new("gcc");
    cmd.args(["-O1", "-g", "-w", "-o"])
        .arg(output)
        .arg(source)
        .args(cflags)
        .args(ldflags)
        .arg(format!("-Wl,-rpath,{}", prefix.join("lib").display()));
    let result = cmd.output().map_err(|e| format!("cannot run gcc: {e}"))?;
    if !result.status.success() {
        return Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&result.stderr)
        ));
    }
    Ok(())
}

fn compile_rust(source: &Path, output: &Path) {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut cmd = Command::new(rustc);
    cmd.args(["--edition", "2021", "-O", "-g", "-o"])
        .arg(output)
        .arg(source);
    let result = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run rustc for {}: {e}", source.display()));
    if !result.status.success() {
        panic!(
            "{cmd:?} failed with {}:\n{}",
            result.status,
            String::from_utf8_lossy(&result.stderr)
        );
    }
}

/// The flags a fixture asks for on a line `/* cflags: FLAGS */` (a
/// non-PIE program: `-no-pie`).
fn extra_cflags(source: &Path) -> Vec<String> {
    let text = fs::read_to_string(source)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", source.display()));
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("/* cflags:"))
        .filter_map(|l| l.strip_suffix("*/"))
        .flat_map(|flags| flags.split_whitespace().map(String::from))
        .collect()
}

fn compile(source: &Path, output: &Path, fp_flag: &str) {
    let compiler = match source.extension().and_then(|e| e.to_str()) {
        Some("cc") => "g++",
        _ => "gcc",
    };
    let mut cmd = Command::new(compiler);
    cmd.args(["-g", "-O0", "-pthread", "-Wall", "-Wextra", fp_flag])
        .args(extra_cflags(source))
        .arg("-o")
        .arg(output)
        .arg(source);
    let result = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {compiler} (needed to build the test fixtures): {e}")
    });
    if !result.status.success() {
        panic!(
            "{cmd:?} failed with {}:\n{}{}",
            result.status,
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
    }
    // Warnings are not fatal, but make them visible.
    for line in String::from_utf8_lossy(&result.stderr).lines() {
        println!("cargo:warning={line}");
    }
}
