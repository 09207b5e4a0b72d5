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
}
