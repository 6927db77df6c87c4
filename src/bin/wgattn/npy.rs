//! Reading and writing the `.npy` files of `wgattn run`.
//!
//! Tensors must be float32, masks bool or uint8, document ids int32 or int64 (either byte order),
//! each of an expected rank; anything else is a [`NpyError`] that names the file and says what was
//! found. Fortran-order files are accepted and returned in C order. Output is always
//! little-endian float32 in C order.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use npyz::{DType, TypeChar, WriterBuilder};

/// An array read from a `.npy` file, in C order.
#[derive(Clone, Debug, PartialEq)]
pub struct Array<T = f32> {
    /// Dimensions as stored in the file.
    pub shape: Vec<usize>,
    /// Elements in C (row-major) order.
    pub data: Vec<T>,
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
    /// The elements are not of a dtype the file may have.
    #[error("{} has dtype {dtype}, but {expected} is required (convert with `{hint}`)", .path.display())]
    DType {
        /// The file.
        path: PathBuf,
        /// The dtype found, e.g. `float64 ('<f8')`.
        dtype: String,
        /// The dtypes accepted, e.g. `float32`.
        expected: &'static str,
        /// How to convert in NumPy.
        hint: &'static str,
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
    /// The array has the right rank but the wrong dimensions.
    #[error("{} has shape {shape:?}, but {expected} is required", .path.display())]
    Shape {
        /// The file.
        path: PathBuf,
        /// The shape found.
        shape: Vec<usize>,
        /// The shape required, in words.
        expected: String,
    },
    /// An int64 value does not fit the int32 the library takes.
    #[error("{} holds the value {value}, outside the int32 range", .path.display())]
    Range {
        /// The file.
        path: PathBuf,
        /// The first value out of range.
        value: i64,
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

/// Read a float32 or float16 array of rank `ndim` from `path`, as f32 (float16 widened exactly).
pub fn read_float(path: &Path, ndim: usize) -> Result<Array<f32>, NpyError> {
    let npy = open(path)?;
    let dtype = npy.dtype();
    if is_plain(&dtype, TypeChar::Float, 2) {
        let a = read_data::<half::f16>(path, npy, ndim)?;
        return Ok(Array { shape: a.shape, data: a.data.into_iter().map(f32::from).collect() });
    }
    if !is_plain(&dtype, TypeChar::Float, 4) {
        return Err(dtype_error(path, &dtype, "float32 or float16", "a.astype(np.float32)"));
    }
    read_data(path, npy, ndim)
}

/// Whether the array in `path` is float16 (else float32 or another dtype).
pub fn is_f16(path: &Path) -> Result<bool, NpyError> {
    Ok(is_plain(&open(path)?.dtype(), TypeChar::Float, 2))
}

/// Write `data` (C order) as a little-endian float16 array of `shape` to `path` (each value
/// rounded to nearest, ties to even).
pub fn write_f16(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), NpyError> {
    debug_assert_eq!(shape.iter().product::<usize>(), data.len());
    let err = |source| NpyError::Write { path: path.into(), source };
    let file = File::create(path).map_err(err)?;
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut writer = npyz::WriteOptions::<half::f16>::new()
        .default_dtype()
        .shape(&shape)
        .writer(BufWriter::new(file))
        .begin_nd()
        .map_err(err)?;
    writer.extend(data.iter().map(|&x| half::f16::from_f32(x))).map_err(err)?;
    writer.finish().map_err(err)
}

/// Read a float32 array of rank `ndim` from `path`.
pub fn read_f32(path: &Path, ndim: usize) -> Result<Array<f32>, NpyError> {
    let npy = open(path)?;
    let dtype = npy.dtype();
    if !is_plain(&dtype, TypeChar::Float, 4) {
        return Err(dtype_error(path, &dtype, "float32", "a.astype(np.float32)"));
    }
    read_data(path, npy, ndim)
}

/// Read a boolean mask of rank `ndim` from `path`: dtype bool, or uint8 where nonzero is true.
pub fn read_bool(path: &Path, ndim: usize) -> Result<Array<bool>, NpyError> {
    let npy = open(path)?;
    let dtype = npy.dtype();
    if is_plain(&dtype, TypeChar::Bool, 1) {
        read_data(path, npy, ndim)
    } else if is_plain(&dtype, TypeChar::Uint, 1) {
        let a = read_data::<u8>(path, npy, ndim)?;
        Ok(Array { shape: a.shape, data: a.data.into_iter().map(|x| x != 0).collect() })
    } else {
        Err(dtype_error(path, &dtype, "bool or uint8", "a.astype(bool)"))
    }
}

/// Read an integer array of rank `ndim` from `path`: dtype int32, or int64 with every value in
/// the int32 range.
pub fn read_i32(path: &Path, ndim: usize) -> Result<Array<i32>, NpyError> {
    let npy = open(path)?;
    let dtype = npy.dtype();
    if is_plain(&dtype, TypeChar::Int, 4) {
        read_data(path, npy, ndim)
    } else if is_plain(&dtype, TypeChar::Int, 8) {
        let a = read_data::<i64>(path, npy, ndim)?;
        let data = a
            .data
            .into_iter()
            .map(|x| i32::try_from(x).map_err(|_| NpyError::Range { path: path.into(), value: x }))
            .collect::<Result<_, _>>()?;
        Ok(Array { shape: a.shape, data })
    } else {
        Err(dtype_error(path, &dtype, "int32 or int64", "a.astype(np.int32)"))
    }
}

fn open(path: &Path) -> Result<npyz::NpyFile<BufReader<File>>, NpyError> {
    let file = File::open(path).map_err(|source| NpyError::Open { path: path.into(), source })?;
    npyz::NpyFile::new(BufReader::new(file)).map_err(|source| NpyError::Header { path: path.into(), source })
}

/// Check the rank of `npy` (whose dtype suits `T`) and read its elements in C order.
fn read_data<T: npyz::Deserialize + Copy>(
    path: &Path,
    npy: npyz::NpyFile<BufReader<File>>,
    ndim: usize,
) -> Result<Array<T>, NpyError> {
    if npy.shape().len() != ndim {
        return Err(NpyError::Rank { path: path.into(), shape: npy.shape().to_vec(), expected: ndim });
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let order = npy.order();
    let data: Vec<T> = npy.into_vec().map_err(|source| NpyError::Data { path: path.into(), source })?;
    let data = match order {
        npyz::Order::C => data,
        npyz::Order::Fortran => fortran_to_c(&data, &shape),
    };
    Ok(Array { shape, data })
}

fn dtype_error(path: &Path, dtype: &DType, expected: &'static str, hint: &'static str) -> NpyError {
    NpyError::DType { path: path.into(), dtype: dtype_name(dtype), expected, hint }
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

/// True when `dtype` is a plain `kind` of `size` bytes (either byte order).
fn is_plain(dtype: &DType, kind: TypeChar, size: u64) -> bool {
    matches!(dtype, DType::Plain(t) if t.type_char() == kind && t.size_field() == size)
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
fn fortran_to_c<T: Copy>(data: &[T], shape: &[usize]) -> Vec<T> {
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
    fn float16_round_trip() {
        let dir = std::env::temp_dir().join(format!("wgattn-npy16-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.npy");
        let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
        write_f16(&p, &[3, 4], &data).unwrap();
        let a = read_float(&p, 2).unwrap();
        assert_eq!((a.shape, a.data), (vec![3, 4], data));
        assert!(read_f32(&p, 2).is_err(), "read_f32 takes float32 only");
        std::fs::remove_dir_all(&dir).unwrap();
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

    fn write<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[u64], data: &[T]) {
        let mut w = npyz::WriteOptions::<T>::new()
            .default_dtype()
            .shape(shape)
            .writer(BufWriter::new(File::create(path).unwrap()))
            .begin_nd()
            .unwrap();
        w.extend(data.iter().copied()).unwrap();
        w.finish().unwrap();
    }

    #[test]
    fn masks_and_ids() {
        let dir = std::env::temp_dir().join(format!("wgattn-npy-masks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = |f: &str| dir.join(f);
        write(&p("b.npy"), &[2, 2], &[true, false, false, true]);
        assert_eq!(read_bool(&p("b.npy"), 2).unwrap().data, vec![true, false, false, true]);
        write(&p("u8.npy"), &[3], &[0u8, 7, 255]);
        assert_eq!(read_bool(&p("u8.npy"), 1).unwrap().data, vec![false, true, true]);
        assert!(matches!(read_bool(&p("u8.npy"), 2), Err(NpyError::Rank { .. })));
        write(&p("f.npy"), &[2], &[1.0f32, 0.0]);
        let e = read_bool(&p("f.npy"), 1).unwrap_err();
        assert!(e.to_string().contains("float32 ('<f4'), but bool or uint8 is required"), "{e}");

        write(&p("i32.npy"), &[2], &[-3i32, 9]);
        assert_eq!(read_i32(&p("i32.npy"), 1).unwrap().data, vec![-3, 9]);
        write(&p("i64.npy"), &[3], &[0i64, -5, i32::MAX as i64]);
        assert_eq!(read_i32(&p("i64.npy"), 1).unwrap().data, vec![0, -5, i32::MAX]);
        write(&p("big.npy"), &[2], &[1i64, 1 << 40]);
        let e = read_i32(&p("big.npy"), 1).unwrap_err();
        assert!(matches!(e, NpyError::Range { value, .. } if value == 1 << 40), "{e}");
        let e = read_i32(&p("u8.npy"), 1).unwrap_err();
        assert!(e.to_string().contains("uint8 ('|u1'), but int32 or int64 is required"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
