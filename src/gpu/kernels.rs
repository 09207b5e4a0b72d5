//! The CUDA kernels compiled by `build.rs` and embedded in the binary.

/// 16-byte aligned wrapper so the embedded image satisfies the alignment the
/// driver's module loader expects of a fatbin.
#[cfg(genesis_kernels)]
#[repr(C, align(16))]
struct Aligned<T: ?Sized>(T);

#[cfg(genesis_kernels)]
static FATBIN: &Aligned<[u8]> = &Aligned(*include_bytes!(env!("GENESIS_FATBIN")));

/// The fatbin holding every kernel in `kernels/*.cu`, or `None` when this
/// binary was built without nvcc (CPU-only build).
pub fn fatbin() -> Option<&'static [u8]> {
    #[cfg(genesis_kernels)]
    {
        Some(&FATBIN.0)
    }
    #[cfg(not(genesis_kernels))]
    {
        None
    }
}

/// Comma-separated architectures in the fatbin (`sm_*` = SASS, `compute_*` =
/// PTX), e.g. `sm_80,sm_86,sm_89,sm_90,compute_90`; empty for a CPU-only build.
pub fn kernel_archs() -> &'static str {
    option_env!("GENESIS_KERNEL_ARCHS").unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatbin_matches_build_cfg() {
        assert_eq!(fatbin().is_some(), cfg!(genesis_kernels));
        assert_eq!(kernel_archs().is_empty(), !cfg!(genesis_kernels));
        if let Some(bin) = fatbin() {
            // Fatbin container magic, little-endian 0xBA55ED50.
            assert_eq!(&bin[..4], &[0x50, 0xed, 0x55, 0xba]);
            assert_eq!(bin.as_ptr() as usize % 16, 0);
        }
    }

    /// The kernel names `src/gpu/*.rs` asks for, read from its source: `(name, also as _bf16)`.
    /// Literals in `function("..")`, `Launch::new(gpu, "..")`, `vec_kernel::<T>(gpu, "..")`,
    /// `pick::<T>("..")` (and its `_vec` twin) and `kernel("..")` calls and in a
    /// function's `const OP`; a
    /// `T::kernel` call needs the `_bf16` twin as well.
    fn requested_kernels() -> Vec<(String, bool)> {
        let mut out = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir("src/gpu")
            .expect("run from the repository root: src/gpu")
            .map(|e| e.unwrap().path())
            // (not this file, whose scanner spells the patterns out)
            .filter(|p| p.extension().is_some_and(|x| x == "rs") && !p.ends_with("kernels.rs"))
            .collect();
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap();
            let mut op = None;
            for line in text.lines() {
                let quoted = |after: &str| -> Vec<String> {
                    line.match_indices(after)
                        .filter_map(|(i, _)| line[i + after.len()..].split('"').next().map(str::to_string))
                        .filter(|n| {
                            !n.is_empty() && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                        })
                        .collect()
                };
                if let Some(name) = quoted("const OP: &str = \"").pop() {
                    out.push((name.clone(), false));
                    op = Some(name);
                }
                if line.contains("T::kernel(OP)") {
                    out.push((
                        op.clone().unwrap_or_else(|| panic!("{}: T::kernel(OP) before const OP", path.display())),
                        true,
                    ));
                }
                out.extend(quoted("kernel(\"").into_iter().map(|n| (n, true)));
                // vec_kernel::<T>(gpu, "name", ..): a _vec kernel in both precisions.
                out.extend(quoted("vec_kernel::<T>(gpu, \"").into_iter().map(|n| (n, true)));
                // pick::<T>("name", vector): the kernel and its _vec version, both in both precisions.
                out.extend(quoted("pick::<T>(\"").into_iter().flat_map(|n| [(format!("{n}_vec"), true), (n, true)]));
                // Launch::new(gpu, "name", ..): a kernel with no _bf16 twin.
                out.extend(quoted("Launch::new(gpu, \"").into_iter().map(|n| (n, false)));
                if line.contains("function(") || line.contains("Launch::new(") {
                    out.extend(quoted("function(\"").into_iter().map(|n| (n, false)));
                    out.extend(quoted("{ \"").into_iter().map(|n| (n, false)));
                }
            }
        }
        out
    }

    /// Every kernel the Rust side launches is in the fatbin (in both precisions where it is
    /// generic), so a misspelt or missing kernel fails here, on a machine without a GPU, rather
    /// than at launch time on one.
    #[test]
    fn every_requested_kernel_is_in_the_fatbin() {
        let wanted = requested_kernels();
        for must in [
            "adamw_update_bf16",
            "params_round_bf16",
            "layernorm_backward",
            "matmul_bias_grad_partial",
            "matmul_bias_grad_add",
            "gelu_forward_vec",
            "layernorm_backward_vec",
            "attention_permute",
            "attention_backward_unpermute_add_vec",
            "attention_backward_unpermute_vec",
            "gelu_backward_overwrite_vec",
        ] {
            assert!(wanted.iter().any(|(n, _)| n == must), "the source scan missed {must}: {wanted:?}");
        }
        let Some(bin) = fatbin() else {
            println!("skipping: CPU-only build (no nvcc), no fatbin to search");
            return;
        };
        // SASS symbol names are stored as plain NUL-terminated strings.
        let has = |name: &str| {
            let needle = format!("{name}\0");
            bin.windows(needle.len()).any(|w| w == needle.as_bytes())
        };
        let mut missing = Vec::new();
        for (name, bf16) in &wanted {
            let names = if *bf16 { vec![name.clone(), format!("{name}_bf16")] } else { vec![name.clone()] };
            missing.extend(names.into_iter().filter(|n| !has(n)));
        }
        assert!(missing.is_empty(), "kernels launched from src/gpu but absent from the fatbin: {missing:?}");
        println!("{} kernel names checked", wanted.len());
    }
}
