//! Numeric arrays from NumPy `.npy`, `.npz` and `.safetensors` files, read in row chunks.
//!
//! - `.npy` (any version): dtypes `f2`/`f4`/`f8` and integer `i1..i8`, `u1..u8`, either byte
//!   order, C or Fortran order. Memory-mapped: a file larger than memory is read chunk by chunk.
//! - `.npz` (a zip of `.npy` members, as `numpy.savez` and `numpy.savez_compressed` write):
//!   members stored uncompressed are memory-mapped in place; deflated members are decompressed
//!   into memory once.
//! - `.safetensors`: `F16`, `F32`, `F64` and integer tensors (row-major), memory-mapped.
//!
//! The format is recognized by the file's first bytes (`\x93NUMPY`, `PK\x03\x04`) and
//! otherwise taken as safetensors. Files with several arrays need a key (the `.npz` member name
//! without `.npy`, or the safetensors tensor name); the error lists the names present.

use std::io::Read;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};

/// Element type of an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// IEEE half precision.
    F16,
    /// Single precision.
    F32,
    /// Double precision.
    F64,
    /// Signed integer of the given byte width.
    Int(usize),
    /// Unsigned integer of the given byte width.
    UInt(usize),
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F16 => 2,
            Dtype::F32 => 4,
            Dtype::F64 => 8,
            Dtype::Int(n) | Dtype::UInt(n) => n,
        }
    }

    /// True for the floating-point types.
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F16 | Dtype::F32 | Dtype::F64)
    }
}

/// IEEE binary16 to f64 (exact).
pub fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((bits >> 10) & 0x1f);
    let frac = f64::from(bits & 0x03ff);
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        31 if frac == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

fn decode(dtype: Dtype, big: bool, b: &[u8]) -> f64 {
    macro_rules! get {
        ($t:ty) => {{
            let a = b.try_into().expect("element width");
            if big { <$t>::from_be_bytes(a) } else { <$t>::from_le_bytes(a) }
        }};
    }
    match dtype {
        Dtype::F16 => f16_to_f64(get!(u16)),
        Dtype::F32 => f64::from(get!(f32)),
        Dtype::F64 => get!(f64),
        Dtype::Int(1) => f64::from(b[0] as i8),
        Dtype::Int(2) => f64::from(get!(i16)),
        Dtype::Int(4) => f64::from(get!(i32)),
        Dtype::Int(_) => get!(i64) as f64,
        Dtype::UInt(1) => f64::from(b[0]),
        Dtype::UInt(2) => f64::from(get!(u16)),
        Dtype::UInt(4) => f64::from(get!(u32)),
        Dtype::UInt(_) => get!(u64) as f64,
    }
}

enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// An array opened for reading.
pub struct Array {
    path: PathBuf,
    name: String,
    bytes: Bytes,
    offset: usize,
    shape: Vec<usize>,
    dtype: Dtype,
    big_endian: bool,
    fortran: bool,
}

impl std::fmt::Debug for Array {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Array")
            .field("path", &self.path)
            .field("name", &self.name)
            .field("shape", &self.shape)
            .field("dtype", &self.dtype)
            .field("fortran", &self.fortran)
            .finish()
    }
}

fn map(path: &Path) -> Result<Mmap> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only; a file changed by another process while it is mapped can
    // give wrong numbers, as reading it with read(2) at the same time would.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

/// The parsed header of a `.npy` image: shape, dtype, byte order, memory order, data offset.
struct NpyHeader {
    shape: Vec<usize>,
    dtype: Dtype,
    big_endian: bool,
    fortran: bool,
    data: usize,
}

fn parse_npy_header(b: &[u8]) -> std::result::Result<NpyHeader, String> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err("not a .npy array (bad magic or truncated header)".into());
    }
    let (len, start) = match b[6] {
        1 => (usize::from(u16::from_le_bytes([b[8], b[9]])), 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let text = b
        .get(start..start + len)
        .ok_or("truncated .npy header")
        .and_then(|h| std::str::from_utf8(h).map_err(|_| "the .npy header is not text"))?;
    let field = |key: &str| -> std::result::Result<&str, String> {
        let i = text.find(&format!("'{key}'")).ok_or(format!("the .npy header lacks '{key}'"))?;
        let rest = &text[i + key.len() + 2..];
        Ok(rest.trim_start().trim_start_matches(':').trim_start())
    };
    let descr = field("descr")?;
    let descr = descr.strip_prefix('\'').and_then(|d| d.split('\'').next()).ok_or(
        "the .npy descr is not a simple type string (structured arrays are not supported)",
    )?;
    if descr.len() < 3 || !descr.is_char_boundary(1) {
        return Err(format!("unsupported dtype '{descr}'"));
    }
    let (order, ty) = descr.split_at(1);
    let big_endian = order == ">";
    let size: usize =
        ty.get(1..).and_then(|s| s.parse().ok()).ok_or(format!("unsupported dtype '{descr}'"))?;
    let dtype = match (ty.chars().next(), size) {
        (Some('f'), 2) => Dtype::F16,
        (Some('f'), 4) => Dtype::F32,
        (Some('f'), 8) => Dtype::F64,
        (Some('i'), 1 | 2 | 4 | 8) => Dtype::Int(size),
        (Some('u'), 1 | 2 | 4 | 8) => Dtype::UInt(size),
        _ => {
            return Err(format!("unsupported dtype '{descr}' (floats f2/f4/f8 and integers only)"));
        }
    };
    let fortran = field("fortran_order")?.starts_with("True");
    let shape_text = field("shape")?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("the .npy shape is not a tuple")?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L').parse::<usize>().map_err(|_| format!("bad .npy size '{s}'"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(NpyHeader { shape, dtype, big_endian, fortran, data: start + len })
}

/// A matrix read a block of rows at a time, as `f64`, row-major: a memory-mapped [`Array`], or
/// an in-memory array (the Python module's NumPy views). `seli_run::analyze::analyze` reads
/// through it, so every source gives the same numbers.
pub trait RowSource: Sync {
    /// The name used in messages (a file path, or an argument name).
    fn name(&self) -> &str;
    /// The shape.
    fn shape(&self) -> &[usize];
    /// Rows `start..end`, row-major.
    ///
    /// # Errors
    /// A read failure or an unsupported element type.
    fn rows(&self, start: usize, end: usize) -> Result<Vec<f64>>;
    /// Whether the values carry no more than f32 precision (float32, float16, bfloat16), so
    /// that products of them may run in f32 with f64 sums.
    fn single(&self) -> bool {
        false
    }
}

impl RowSource for Array {
    fn name(&self) -> &str {
        Array::name(self)
    }
    fn shape(&self) -> &[usize] {
        Array::shape(self)
    }
    fn rows(&self, start: usize, end: usize) -> Result<Vec<f64>> {
        Array::rows(self, start, end)
    }
    fn single(&self) -> bool {
        self.dtype.is_float() && self.dtype.size() <= 4
    }
}

/// `"NAME: "` for an array inside an archive, nothing for a plain `.npy` (the error already
/// names the file).
fn member(path: &Path, name: &str) -> String {
    if name == path.display().to_string() { String::new() } else { format!("{name}: ") }
}

impl Array {
    fn member(&self) -> String {
        member(&self.path, &self.name)
    }

    /// Opens `key` (or the only array) of the file at `path`.
    ///
    /// # Errors
    /// An unreadable file; an unrecognized or corrupt format; a missing or ambiguous key (the
    /// names present are listed); an unsupported dtype; a data section shorter than the shape
    /// needs (truncated). Each message names the file.
    pub fn open(path: &Path, key: Option<&str>) -> Result<Array> {
        let m = map(path)?;
        if m.starts_with(b"\x93NUMPY") {
            Self::from_npy(path, path.display().to_string(), Bytes::Mapped(m), 0)
        } else if m.starts_with(b"PK\x03\x04") {
            drop(m);
            Self::from_npz(path, key)
        } else {
            Self::from_safetensors(path, m, key)
        }
    }

    fn from_npy(path: &Path, name: String, bytes: Bytes, at: usize) -> Result<Array> {
        let h = parse_npy_header(&bytes.as_slice()[at..])
            .map_err(|e| Error::format(path, format!("{}{e}", member(path, &name))))?;
        let a = Array {
            path: path.to_path_buf(),
            name,
            offset: at + h.data,
            bytes,
            shape: h.shape,
            dtype: h.dtype,
            big_endian: h.big_endian,
            fortran: h.fortran,
        };
        a.check_length()?;
        Ok(a)
    }

    fn check_length(&self) -> Result<()> {
        let need = self.shape.iter().try_fold(self.dtype.size(), |a, &d| a.checked_mul(d));
        let have = self.bytes.as_slice().len().saturating_sub(self.offset);
        match need {
            Some(n) if n <= have => Ok(()),
            Some(n) => Err(Error::format(
                &self.path,
                format!(
                    "{}truncated: shape {:?} of {:?} needs {n} data bytes, the file has {have}",
                    self.member(),
                    self.shape,
                    self.dtype
                ),
            )),
            None => Err(Error::format(
                &self.path,
                format!("{}shape {:?} overflows", self.member(), self.shape),
            )),
        }
    }

    /// The array names in the `.npz` archive at `path` (members without their `.npy`).
    ///
    /// # Errors
    /// An unreadable file or a corrupt archive, named.
    pub fn npz_members(path: &Path) -> Result<Vec<String>> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let zip = zip::ZipArchive::new(file)
            .map_err(|e| Error::format(path, format!("corrupt .npz archive: {e}")))?;
        zip.file_names()
            .map(|n| n.map(|n| n.trim_end_matches(".npy").to_string()))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::format(path, format!("corrupt .npz member name: {e}")))
    }

    fn from_npz(path: &Path, key: Option<&str>) -> Result<Array> {
        let names = Self::npz_members(path)?;
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut zip = zip::ZipArchive::new(file)
            .map_err(|e| Error::format(path, format!("corrupt .npz archive: {e}")))?;
        let name = pick(path, &names, key)?;
        let member = if zip.index_for_name(&format!("{name}.npy")).is_some() {
            format!("{name}.npy")
        } else {
            name.clone()
        };
        let mut entry = zip
            .by_name(&member)
            .map_err(|e| Error::format(path, format!("member '{name}': {e}")))?;
        let label = format!("{}[{name}]", path.display());
        if entry.compression() == zip::CompressionMethod::Stored {
            let at = usize::try_from(entry.data_start().unwrap_or(0)).unwrap_or(usize::MAX);
            drop(entry);
            let m = map(path)?;
            if at >= m.len() {
                return Err(Error::format(
                    path,
                    format!("member '{name}' lies past the end (truncated)"),
                ));
            }
            Self::from_npy(path, label, Bytes::Mapped(m), at)
        } else {
            let mut v = Vec::new();
            entry.read_to_end(&mut v).map_err(|e| {
                Error::format(path, format!("member '{name}': corrupt or truncated: {e}"))
            })?;
            Self::from_npy(path, label, Bytes::Owned(v), 0)
        }
    }

    fn from_safetensors(path: &Path, m: Mmap, key: Option<&str>) -> Result<Array> {
        let (n, meta) = safetensors::SafeTensors::read_metadata(&m).map_err(|e| {
            Error::format(
                path,
                format!("not a .npy, .npz or .safetensors file, or a damaged one: {e}"),
            )
        })?;
        let mut names: Vec<String> = meta.tensors().keys().cloned().collect();
        names.sort();
        let name = pick(path, &names, key)?;
        let info = meta.info(&name).expect("listed tensor");
        use safetensors::Dtype as D;
        let dtype = match info.dtype {
            D::F16 => Dtype::F16,
            D::F32 => Dtype::F32,
            D::F64 => Dtype::F64,
            D::I8 => Dtype::Int(1),
            D::I16 => Dtype::Int(2),
            D::I32 => Dtype::Int(4),
            D::I64 => Dtype::Int(8),
            D::U8 => Dtype::UInt(1),
            D::U16 => Dtype::UInt(2),
            D::U32 => Dtype::UInt(4),
            D::U64 => Dtype::UInt(8),
            other => {
                return Err(Error::format(
                    path,
                    format!("tensor '{name}' has unsupported dtype {other:?}"),
                ));
            }
        };
        let a = Array {
            path: path.to_path_buf(),
            name: format!("{}[{name}]", path.display()),
            offset: 8 + n + info.data_offsets.0,
            bytes: Bytes::Mapped(m),
            shape: info.shape.clone(),
            dtype,
            big_endian: false,
            fortran: false,
        };
        a.check_length()?;
        Ok(a)
    }

    /// The file and member this array came from, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Element type.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Fortran (column-major) memory order.
    pub fn is_fortran(&self) -> bool {
        self.fortran
    }

    /// `(rows, cols)` of a 1-D (`cols = 1`) or 2-D array.
    ///
    /// # Errors
    /// Any other number of dimensions.
    pub fn matrix_shape(&self) -> Result<(usize, usize)> {
        match self.shape[..] {
            [n] => Ok((n, 1)),
            [n, d] => Ok((n, d)),
            _ => Err(Error::format(
                &self.path,
                format!("{}shape {:?}: expected a vector or a matrix", self.member(), self.shape),
            )),
        }
    }

    /// Rows `start..end` as row-major f64 values (`(end - start) × cols`).
    ///
    /// # Panics
    /// A range outside the array (callers iterate within [`Array::matrix_shape`]).
    pub fn rows(&self, start: usize, end: usize) -> Result<Vec<f64>> {
        let (n, cols) = self.matrix_shape()?;
        assert!(start <= end && end <= n, "rows {start}..{end} of {n}");
        let s = self.dtype.size();
        let data = &self.bytes.as_slice()[self.offset..];
        let mut out = Vec::with_capacity((end - start) * cols);
        if self.fortran && cols > 1 {
            out.resize((end - start) * cols, 0.0);
            for j in 0..cols {
                for i in start..end {
                    let at = (j * n + i) * s;
                    out[(i - start) * cols + j] =
                        decode(self.dtype, self.big_endian, &data[at..at + s]);
                }
            }
        } else {
            for e in data[start * cols * s..end * cols * s].chunks_exact(s) {
                out.push(decode(self.dtype, self.big_endian, e));
            }
        }
        Ok(out)
    }

    /// The dtype in NumPy's notation (`<f8`, `>i4`, `|u1`).
    pub fn descr(&self) -> String {
        let order = if self.dtype.size() == 1 {
            '|'
        } else if self.big_endian {
            '>'
        } else {
            '<'
        };
        let kind = match self.dtype {
            Dtype::F16 | Dtype::F32 | Dtype::F64 => 'f',
            Dtype::Int(_) => 'i',
            Dtype::UInt(_) => 'u',
        };
        format!("{order}{kind}{}", self.dtype.size())
    }

    /// The whole array as integers (labels): a vector, shape `(n,)`.
    ///
    /// # Errors
    /// A float dtype; another shape (a column `(n, 1)` too: it is named, with how to flatten
    /// it); an unsigned value above `i64::MAX`.
    pub fn integers(&self) -> Result<Vec<i64>> {
        let n = match self.shape[..] {
            [n] => n,
            _ => {
                return Err(Error::format(
                    &self.path,
                    format!("{}{}", self.member(), label_shape_error(&self.shape)),
                ));
            }
        };
        if self.dtype.is_float() {
            return Err(Error::format(
                &self.path,
                format!(
                    "{}dtype '{}' is not an integer type (labels must be integers)",
                    self.member(),
                    self.descr()
                ),
            ));
        }
        let s = self.dtype.size();
        let data = &self.bytes.as_slice()[self.offset..self.offset + n * s];
        data.chunks_exact(s)
            .enumerate()
            .map(|(i, e)| match self.dtype {
                Dtype::UInt(8) => {
                    let a = e.try_into().expect("8 bytes");
                    let v =
                        if self.big_endian { u64::from_be_bytes(a) } else { u64::from_le_bytes(a) };
                    i64::try_from(v).map_err(|_| {
                        Error::format(
                            &self.path,
                            format!(
                                "{}label {v} at position {i} does not fit in 64 bits",
                                self.member()
                            ),
                        )
                    })
                }
                Dtype::Int(8) => {
                    let a = e.try_into().expect("8 bytes");
                    Ok(if self.big_endian { i64::from_be_bytes(a) } else { i64::from_le_bytes(a) })
                }
                _ => Ok(decode(self.dtype, self.big_endian, e) as i64),
            })
            .collect()
    }
}

fn pick(path: &Path, names: &[String], key: Option<&str>) -> Result<String> {
    match key {
        Some(k) if names.iter().any(|n| n == k) => Ok(k.to_string()),
        Some(k) => {
            Err(Error::format(path, format!("no array '{k}' (it holds: {})", names.join(", "))))
        }
        None if names.len() == 1 => Ok(names[0].clone()),
        None => Err(Error::format(
            path,
            format!(
                "holds {} arrays ({}): name one with the matching --*-key flag",
                names.len(),
                names.join(", ")
            ),
        )),
    }
}

/// Writing `.npy` images (tests and tools): a C- or Fortran-ordered array of `f64` values
/// encoded as `dtype` (little-endian).
pub fn encode_npy(
    shape: &[usize],
    values_row_major: &[f64],
    dtype: Dtype,
    fortran: bool,
) -> Vec<u8> {
    let descr = match dtype {
        Dtype::F16 => "<f2".to_string(),
        Dtype::F32 => "<f4".to_string(),
        Dtype::F64 => "<f8".to_string(),
        Dtype::Int(n) => format!("<i{n}"),
        Dtype::UInt(n) => format!("<u{n}"),
    };
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let tuple =
        if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {tuple}, }}",
        if fortran { "True" } else { "False" }
    );
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    let (n, cols) = match shape {
        [n] => (*n, 1),
        [n, d] => (*n, *d),
        _ => (values_row_major.len(), 1),
    };
    let order: Vec<f64> = if fortran && cols > 1 {
        (0..cols).flat_map(|j| (0..n).map(move |i| values_row_major[i * cols + j])).collect()
    } else {
        values_row_major.to_vec()
    };
    for v in order {
        match dtype {
            Dtype::F16 => out.extend_from_slice(&f64_to_f16(v).to_le_bytes()),
            Dtype::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
            Dtype::F64 => out.extend_from_slice(&v.to_le_bytes()),
            Dtype::Int(s) | Dtype::UInt(s) => out.extend_from_slice(&(v as i64).to_le_bytes()[..s]),
        }
    }
    out
}

/// f64 to the nearest IEEE binary16 (round to nearest even; overflow to infinity).
pub fn f64_to_f16(v: f64) -> u16 {
    let f = v as f32;
    let bits = f.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    if f.is_nan() {
        return sign | 0x7e00;
    }
    let a = f.abs();
    if a >= 65520.0 {
        return sign | 0x7c00;
    }
    if a < 6.103_515_6e-5 {
        // Subnormal: multiples of 2^-24.
        return sign | (a * 16_777_216.0).round_ties_even() as u16;
    }
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let mant = bits & 0x7f_ffff;
    let mut h = ((exp as u32) << 10) | (mant >> 13);
    let rest = mant & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && h & 1 == 1) {
        h += 1;
    }
    sign | h as u16
}

/// Why a label array of `shape` (not a vector) is refused, and what to do.
pub fn label_shape_error(shape: &[usize]) -> String {
    let hint = match shape {
        [_, 1] | [1, _] => "; flatten it when saving (y.reshape(-1), y.squeeze(), y.view(-1))",
        [_, k] if *k > 1 => "; one-hot labels? save y.argmax(1)",
        _ => "",
    };
    format!("label array has shape {shape:?}; labels must be a vector of shape (n,){hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, d: usize) -> Vec<f64> {
        (0..n * d).map(|i| (i as f64 * 0.37).sin() * 4.0).collect()
    }

    #[test]
    fn npy_orders_and_dtypes_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let v = values(7, 3);
        for (dtype, tol) in [(Dtype::F64, 0.0), (Dtype::F32, 1e-6), (Dtype::F16, 4e-3)] {
            for fortran in [false, true] {
                let p = dir.path().join("a.npy");
                std::fs::write(&p, encode_npy(&[7, 3], &v, dtype, fortran)).unwrap();
                let a = Array::open(&p, None).unwrap();
                assert_eq!(a.matrix_shape().unwrap(), (7, 3));
                assert_eq!(a.is_fortran(), fortran);
                let got = a.rows(2, 6).unwrap();
                for (g, w) in got.iter().zip(&v[6..18]) {
                    assert!(
                        (g - w).abs() <= tol * w.abs().max(1.0),
                        "{dtype:?} {fortran}: {g} {w}"
                    );
                }
            }
        }
        assert_eq!(f16_to_f64(f64_to_f16(1.5)), 1.5);
        assert_eq!(f16_to_f64(f64_to_f16(-65504.0)), -65504.0);
        assert_eq!(f16_to_f64(0x0001), 2f64.powi(-24));
    }

    #[test]
    fn bad_files_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.npy");
        let bytes = encode_npy(&[5, 2], &values(5, 2), Dtype::F32, false);
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        let e = Array::open(&p, None).unwrap_err().to_string();
        assert!(e.contains("t.npy") && e.contains("truncated"), "{e}");
        let mut odd = bytes.clone();
        let i = odd.windows(3).position(|w| w == b"<f4").unwrap();
        odd[i + 1..i + 3].copy_from_slice(b"c8");
        std::fs::write(&p, &odd).unwrap();
        assert!(Array::open(&p, None).unwrap_err().to_string().contains("unsupported dtype '<c8'"));
        // Found by the robustness test: an empty or one-character descr.
        for bad in ["''", "'<'", "'é'"] {
            let i = bytes.windows(5).position(|w| w == b"'<f4'").unwrap();
            let mut b = bytes[..i].to_vec();
            b.extend_from_slice(bad.as_bytes());
            b.extend_from_slice(&bytes[i + 5..]);
            std::fs::write(&p, &b).unwrap();
            let e = Array::open(&p, None).unwrap_err().to_string();
            assert!(e.contains("unsupported dtype") || e.contains("truncated"), "{bad}: {e}");
        }
        std::fs::write(&p, b"hello world, not an array").unwrap();
        let e = Array::open(&p, None).unwrap_err().to_string();
        assert!(e.contains("not a .npy, .npz or .safetensors"), "{e}");
        std::fs::write(&p, encode_npy(&[4], &[1.0, 2.0, 0.5, 3.0], Dtype::F32, false)).unwrap();
        assert!(
            Array::open(&p, None)
                .unwrap()
                .integers()
                .unwrap_err()
                .to_string()
                .contains("dtype '<f4' is not an integer type")
        );
    }

    #[test]
    fn npz_stored_and_deflated_and_safetensors_round_trip() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let v = values(6, 4);
        let labels = [0.0, 1.0, 2.0, 0.0, 1.0, 2.0];
        for method in [zip::CompressionMethod::Stored, zip::CompressionMethod::Deflated] {
            let p = dir.path().join("a.npz");
            let mut w = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
            let opts = zip::write::SimpleFileOptions::default().compression_method(method);
            w.start_file("features.npy", opts).unwrap();
            w.write_all(&encode_npy(&[6, 4], &v, Dtype::F32, true)).unwrap();
            w.start_file("labels.npy", opts).unwrap();
            w.write_all(&encode_npy(&[6], &labels, Dtype::Int(8), false)).unwrap();
            w.finish().unwrap();
            let a = Array::open(&p, Some("features")).unwrap();
            let got = a.rows(0, 6).unwrap();
            assert!(got.iter().zip(&v).all(|(g, w)| (g - w).abs() < 1e-6), "{method:?}");
            assert_eq!(
                Array::open(&p, Some("labels")).unwrap().integers().unwrap(),
                vec![0, 1, 2, 0, 1, 2]
            );
            let e = Array::open(&p, None).unwrap_err().to_string();
            assert!(e.contains("holds 2 arrays (features, labels)"), "{e}");
            let e = Array::open(&p, Some("logits")).unwrap_err().to_string();
            assert!(e.contains("no array 'logits'"), "{e}");
        }
        let p = dir.path().join("a.safetensors");
        let bytes: Vec<u8> = v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![6, 4], &bytes)
                .unwrap();
        std::fs::write(&p, safetensors::tensor::serialize([("h", view)], None).unwrap()).unwrap();
        let a = Array::open(&p, None).unwrap();
        assert_eq!(a.matrix_shape().unwrap(), (6, 4));
        assert!(a.rows(1, 3).unwrap().iter().zip(&v[4..12]).all(|(g, w)| (g - w).abs() < 1e-6));
        let full = std::fs::read(&p).unwrap();
        std::fs::write(&p, &full[..full.len() - 8]).unwrap();
        let e = Array::open(&p, None).unwrap_err().to_string();
        assert!(e.contains("a.safetensors"), "{e}");
    }
}
