//! Reading and writing the float32 `.npy` files of `wgattn run`.
//!
//! Input arrays must be float32 (either byte order) of an expected rank; anything else is a
//! [`NpyError`] that names the file and says what was found. Fortran-order files are accepted and
//! returned in C order. Output is always little-endian float32 in C order.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use npyz::{DType, TypeChar, WriterBuilder};

/// A float32 array read from a `.npy` file, in C order.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    /// Dimensions as stored in the file.
    pub shape: Vec<usize>,
    /// Elements in C (row-major) order.
    pub data: Vec<f32>,
}

/// What went wrong with a `.npy` file.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// The file could not be opened.
    #[error("cannot open {}: {source}", .path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a `.npy` file, or its header is broken.
    #[error("{} is not a valid .npy file: {source}", .path.display())]
    Header {
        /// The file.
        path: PathBuf,
        /// npyz's complaint.
        source: std::io::Error,
    },
    /// The elements are not float32.
    #[error(
        "{} has dtype {dtype}, but float32 is required (convert with `a.astype(np.float32)`)",
        .path.display()
    )]
    DType {
        /// The file.
        path: PathBuf,
        /// The dtype found, e.g. `float64 ('<f8')`.
        dtype: String,
    },
    /// The array has the wrong number of dimensions.
    #[error(
        "{} has shape {shape:?} ({}-D), but a {expected}-D array is required",
        .path.display(),
        .shape.len()
    )]
    Rank {
        /// The file.
        path: PathBuf,
        /// The shape found.
        shape: Vec<u64>,
        /// The rank required.
        expected: usize,
    },
    /// The data ended early or could not be read.
    #[error("cannot read the data of {}: {source}", .path.display())]
    Data {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The output could not be written.
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Read a float32 array of rank `ndim` from `path`.
pub fn read_f32(path: &Path, ndim: usize) -> Result<Array, NpyError> {
    let file = File::open(path).map_err(|source| NpyError::Open { path: path.into(), source })?;
    let npy = npyz::NpyFile::new(BufReader::new(file))
        .map_err(|source| NpyError::Header { path: path.into(), source })?;
    let dtype = npy.dtype();
    if !is_f32(&dtype) {
        return Err(NpyError::DType { path: path.into(), dtype: dtype_name(&dtype) });
    }
    if npy.shape().len() != ndim {
        return Err(NpyError::Rank { path: path.into(), shape: npy.shape().to_vec(), expected: ndim });
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let order = npy.order();
    let data: Vec<f32> = npy.into_vec().map_err(|source| NpyError::Data { path: path.into(), source })?;
    let data = match order {
        npyz::Order::C => data,
        npyz::Order::Fortran => fortran_to_c(&data, &shape),
    };
    Ok(Array { shape, data })
}

/// Write `data` (C order) as a little-endian float32 array of `shape` to `path`.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), NpyError> {
    debug_assert_eq!(shape.iter().product::<usize>(), data.len());
    let err = |source| NpyError::Write { path: path.into(), source };
    let file = File::create(path).map_err(err)?;
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut writer = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&shape)
        .writer(BufWriter::new(file))
        .begin_nd()
        .map_err(err)?;
    writer.extend(data.iter().copied()).map_err(err)?;
    writer.finish().map_err(err)
}

fn is_f32(dtype: &DType) -> bool {
    matches!(dtype, DType::Plain(t) if t.type_char() == TypeChar::Float && t.size_field() == 4)
}

/// A readable name for `dtype`: `float64 ('<f8')`, or numpy's descr for the unusual ones.
fn dtype_name(dtype: &DType) -> String {
    if let DType::Plain(t) = dtype {
        let bits = t.size_field() * 8;
        let kind = match t.type_char() {
            TypeChar::Float => Some("float"),
            TypeChar::Int => Some("int"),
            TypeChar::Uint => Some("uint"),
            TypeChar::Complex => Some("complex"),
            _ => None,
        };
        match (kind, t.type_char()) {
            (Some(kind), _) => return format!("{kind}{bits} ('{t}')"),
            (None, TypeChar::Bool) => return format!("bool ('{t}')"),
            _ => {}
        }
    }
    dtype.descr()
}

/// Reorder a Fortran-order (column-major) array of `shape` into C order.
fn fortran_to_c(data: &[f32], shape: &[usize]) -> Vec<f32> {
    // Fortran strides: the first index is the fastest.
    let mut f_strides = vec![1usize; shape.len()];
    for i in 1..shape.len() {
        f_strides[i] = f_strides[i - 1] * shape[i - 1];
    }
    let mut out = Vec::with_capacity(data.len());
    let mut index = vec![0usize; shape.len()];
    for _ in 0..data.len() {
        let at: usize = index.iter().zip(&f_strides).map(|(i, s)| i * s).sum();
        out.push(data[at]);
        // Advance the C-order (last index fastest) odometer.
        for axis in (0..shape.len()).rev() {
            index[axis] += 1;
            if index[axis] < shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fortran_order_is_transposed() {
        // [[0, 1, 2], [3, 4, 5]] stored column-major.
        let f = [0.0, 3.0, 1.0, 4.0, 2.0, 5.0];
        assert_eq!(fortran_to_c(&f, &[2, 3]), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn round_trip_and_errors() {
        let dir = std::env::temp_dir().join(format!("wgattn-npy-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.npy");
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5).collect();
        write_f32(&p, &[1, 2, 3, 4], &data).unwrap();
        let a = read_f32(&p, 4).unwrap();
        assert_eq!(a.shape, vec![1, 2, 3, 4]);
        assert_eq!(a.data, data);
        assert!(matches!(read_f32(&p, 1), Err(NpyError::Rank { .. })));

        let p64 = dir.join("b.npy");
        let mut w = npyz::WriteOptions::<f64>::new()
            .default_dtype()
            .shape(&[2])
            .writer(BufWriter::new(File::create(&p64).unwrap()))
            .begin_nd()
            .unwrap();
        w.extend([1.0, 2.0]).unwrap();
        w.finish().unwrap();
        let e = read_f32(&p64, 1).unwrap_err();
        assert!(matches!(e, NpyError::DType { .. }));
        assert!(e.to_string().contains("float64 ('<f8')"), "{e}");
        let pf = dir.join("f.npy");
        let mut w = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&[2, 3])
            .order(npyz::Order::Fortran)
            .writer(BufWriter::new(File::create(&pf).unwrap()))
            .begin_nd()
            .unwrap();
        w.extend([0.0, 3.0, 1.0, 4.0, 2.0, 5.0]).unwrap();
        w.finish().unwrap();
        assert_eq!(read_f32(&pf, 2).unwrap().data, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);

        assert!(matches!(read_f32(&dir.join("missing.npy"), 4), Err(NpyError::Open { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
