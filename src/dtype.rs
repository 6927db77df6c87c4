//! Element types of device tensors. [`DType::size`] is the one place that knows how many bytes an
//! element takes: every byte count in the crate goes through it.
//!
//! 16-bit tensors (f16, bf16) are stored two elements to a 32-bit word, element `e` in the low
//! half of word `e / 2` when `e` is even and in the high half when it is odd (little-endian, as
//! a `&[half::f16]` is laid out in memory). The kernels read them with `unpack2x16float` (f16)
//! or a shift and `bitcast<f32>` (bf16, the top half of an f32), both core WGSL: neither needs
//! the `SHADER_F16` feature, so every dtype runs on every adapter (WebGPU in browsers and
//! llvmpipe GL included). Scores, softmax statistics, accumulators and LSE are always f32.

/// The element type of a tensor.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE 754 binary32.
    #[default]
    F32,
    /// IEEE 754 binary16 (`half::f16`): 10-bit mantissa, finite up to 65504.
    F16,
    /// bfloat16 (`half::bf16`): the top 16 bits of an f32 (8-bit exponent, 7-bit mantissa).
    BF16,
}

impl DType {
    /// Every dtype, f32 first.
    pub const ALL: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    /// Bytes per element.
    pub const fn size(self) -> u64 {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Bytes of `elements` elements.
    pub const fn bytes(self, elements: u64) -> u64 {
        elements * self.size()
    }

    /// The name used in tuning keys, messages and the CLI (`f32`, `f16`, `bf16`).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// The dtype named `name` (`f32`, `f16` or `bf16`).
    pub fn parse(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The code the kernels' `*_TYPE` @params take: 0 f32, 1 f16, 2 bf16.
    pub(crate) const fn shader_code(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::BF16 => 2,
        }
    }

    /// `x` rounded to the nearest value of this dtype (ties to even), returned as an f32 (exact:
    /// every f16 and bf16 is an f32). Identity for f32.
    pub fn round(self, x: f32) -> f32 {
        match self {
            DType::F32 => x,
            DType::F16 => half::f16::from_f32(x).to_f32(),
            DType::BF16 => half::bf16::from_f32(x).to_f32(),
        }
    }

    /// The bytes of `data` stored in this dtype (each value rounded to nearest, ties to even).
    pub(crate) fn encode(self, data: &[f32]) -> Vec<u8> {
        match self {
            DType::F32 => bytemuck::cast_slice(data).to_vec(),
            DType::F16 => data.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
            DType::BF16 => data.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
        }
    }

    /// Element `i` of `bytes` (elements of this dtype), widened exactly to f32.
    pub(crate) fn decode_at(self, bytes: &[u8], i: usize) -> f32 {
        match self {
            DType::F32 => f32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()),
            DType::F16 => half::f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32(),
            DType::BF16 => half::bf16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32(),
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A host element type a tensor can be uploaded from: `f32`, `half::f16`, `half::bf16`.
pub trait Element: bytemuck::Pod + sealed::Sealed {
    /// The device dtype of this element type.
    const DTYPE: DType;
    /// Widened exactly to f32.
    fn to_f32(self) -> f32;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f32(self) -> f32 {
        self
    }
}

impl Element for half::f16 {
    const DTYPE: DType = DType::F16;
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

impl Element for half::bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// Bytes of `n` 32-bit words (uniforms, block tables and other `u32` arrays the kernels read).
pub(crate) const fn word_bytes(n: u64) -> u64 {
    n * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rounding() {
        let xs = [0.0f32, -1.5, 65504.0, 1.0e-7, 3.140625, 1.0 + 1.0 / 1024.0, 1.0 + 1.0 / 4096.0];
        for dt in DType::ALL {
            let bytes = dt.encode(&xs);
            assert_eq!(bytes.len() as u64, dt.bytes(xs.len() as u64));
            for (i, &x) in xs.iter().enumerate() {
                assert_eq!(dt.decode_at(&bytes, i), dt.round(x), "{dt} {x}");
            }
            assert_eq!(DType::parse(dt.name()), Some(dt));
        }
        // ties to even: 1 + 2⁻¹¹ lies half way between two f16 values, rounds to 1
        assert_eq!(DType::F16.round(1.0 + 1.0 / 2048.0), 1.0);
        assert_eq!(DType::BF16.round(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(DType::F16.round(70000.0), f32::INFINITY);
    }
}
