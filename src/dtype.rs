//! Element types of device tensors. [`DType::size`] is the one place that knows how many bytes an
//! element takes: every byte count in the crate goes through it.

/// The element type of a tensor.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE 754 binary32.
    #[default]
    F32,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> u64 {
        match self {
            DType::F32 => 4,
        }
    }

    /// Bytes of `elements` elements.
    pub const fn bytes(self, elements: u64) -> u64 {
        elements * self.size()
    }

    /// The name used in tuning keys and messages (`f32`).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Bytes of `n` 32-bit words (uniforms, block tables and other `u32` arrays the kernels read).
pub(crate) const fn word_bytes(n: u64) -> u64 {
    n * 4
}
