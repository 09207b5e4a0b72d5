//! The layering ARCHITECTURE.md describes, checked on the source: a module of the library may use
//! only modules of its own layer or a lower one (`crate::X` paths outside `#[cfg(test)]` code).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Top-level modules of `src/lib.rs` by layer, lowest first.
const LAYERS: &[(&str, &[&str])] = &[
    ("model/util", &["model", "util", "rng", "nvcc_pins"]),
    ("formats", &["checkpoint", "safetensors", "hf", "llmc", "weights", "data"]),
    ("engines", &["cpu", "gpu"]),
    ("train/eval/bench", &["train", "eval", "bench", "doctor", "plot"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`src/gpu/gpt.rs` -> `gpu`), or `None` for the
/// binary's files.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.trim_end_matches(".rs").to_string();
    (!matches!(first.as_str(), "main" | "lib" | "cmd")).then_some(first)
}

/// `crate::X` module names used in `text` before its unit tests.
fn uses(text: &str) -> Vec<(usize, String)> {
    let code = text.split("#[cfg(test)]").next().unwrap();
    let mut found = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let line = line.split("//").next().unwrap();
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let name: String = rest[at + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            found.push((n + 1, name));
            rest = &rest[at + 7..];
        }
    }
    found
}

#[test]
fn modules_only_use_their_layer_or_lower_ones() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut seen = BTreeMap::new();
    let mut wrong = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else { continue };
        let Some(mine) = layer_of(&module) else {
            panic!("{} belongs to module `{module}`, which tests/layers.rs does not place in a layer", file.display());
        };
        for (line, used) in uses(&fs::read_to_string(file).unwrap()) {
            let theirs =
                layer_of(&used).unwrap_or_else(|| panic!("{}:{line}: unknown module crate::{used}", file.display()));
            *seen.entry(used.clone()).or_insert(0) += 1;
            if theirs > mine {
                wrong.push(format!(
                    "{}:{line}: `{module}` ({}) uses crate::{used} ({}), a higher layer",
                    file.display(),
                    LAYERS[mine].0,
                    LAYERS[theirs].0
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "imports that point up:\n{}", wrong.join("\n"));
    // The scan found the crate's imports (a scan that reads nothing would pass vacuously).
    assert!(seen.len() >= 10 && seen["model"] > 20, "{seen:?}");
}

#[test]
fn every_library_module_has_a_layer() {
    let lib = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(name) = line.strip_prefix("pub mod ").and_then(|l| l.strip_suffix(';')) {
            assert!(layer_of(name).is_some(), "src/lib.rs declares `{name}`; place it in a layer in tests/layers.rs");
        }
    }
}

#[test]
fn only_gpu_calls_cudarc() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let gpu = root.join("src").join("gpu");
    let outside: Vec<String> = files
        .iter()
        .filter(|f| !f.starts_with(&gpu))
        .filter(|f| fs::read_to_string(f).unwrap().lines().any(|l| l.split("//").next().unwrap().contains("cudarc::")))
        .map(|f| f.display().to_string())
        .collect();
    assert!(outside.is_empty(), "cudarc used outside src/gpu (put it behind genesis::gpu): {outside:?}");
    assert!(files.iter().any(|f| f.starts_with(&gpu) && fs::read_to_string(f).unwrap().contains("cudarc::")));
}
