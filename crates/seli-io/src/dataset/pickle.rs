//! A reader for the subset of Python's pickle format that data files use: containers,
//! numbers, strings and bytes, and NumPy arrays (`numpy.core.multiarray._reconstruct` +
//! `BUILD`, or `_frombuffer` at protocol 5; either `numpy.core` or `numpy._core`). Protocols 0–5 binary opcodes; Python 2
//! byte strings (`STRING`/`BINSTRING`) become bytes, as `pickle.load(f, encoding='bytes')`
//! reads them; Python 3 `bytes` pickled at protocol 2 (`_codecs.encode(str, 'latin1')`) too.
//!
//! Nothing is executed: a global other than those above is kept as an opaque value, so a
//! malicious file can at worst be rejected.

use std::rc::Rc;

/// A decoded pickle value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits in `i64`.
    Int(i64),
    /// A float.
    Float(f64),
    /// `bytes` (and Python 2 `str`).
    Bytes(Rc<[u8]>),
    /// `str`.
    Str(String),
    /// `list`.
    List(Vec<Value>),
    /// `tuple`.
    Tuple(Vec<Value>),
    /// `dict`, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A NumPy array.
    Array(NdArray),
    /// A NumPy dtype: its type string (`"u1"`, `"<f4"`...) and byte-order character.
    Dtype(String, char),
    /// A global reference (`module`, `name`) that is not interpreted.
    Global(String, String),
    /// Any other reconstructed object: the callable and its arguments.
    Object(Box<Value>, Box<Value>),
    /// The stack marker (never in a finished value).
    Mark,
}

/// A NumPy array as pickled: shape, dtype, memory order and raw bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct NdArray {
    /// Shape.
    pub shape: Vec<usize>,
    /// Type string without byte order (`"u1"`, `"f4"`...).
    pub dtype: String,
    /// Byte order: `<`, `>`, `|` (not applicable) or `=`.
    pub order: char,
    /// Fortran (column-major) memory order.
    pub fortran: bool,
    /// The raw data.
    pub data: Rc<[u8]>,
}

impl Value {
    /// The entry of a dict under `key`, given as text: matches both `str` and `bytes` keys.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let Value::Dict(items) = self else { return None };
        items.iter().find_map(|(k, v)| match k {
            Value::Str(s) if s == key => Some(v),
            Value::Bytes(b) if &b[..] == key.as_bytes() => Some(v),
            _ => None,
        })
    }

    /// A short description of the value's type, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Bytes(_) => "bytes",
            Value::Str(_) => "str",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Array(_) => "numpy array",
            Value::Dtype(..) => "numpy dtype",
            Value::Global(..) => "global",
            Value::Object(..) => "object",
            Value::Mark => "mark",
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            format!(
                "truncated: needs {n} more bytes at offset {}, the file has {} left",
                self.pos,
                self.bytes.len() - self.pos
            )
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.bytes[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or("truncated: unterminated line")?;
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end]).map_err(|_| "a text line is not UTF-8".to_string())
    }
    fn len_u64(&mut self) -> Result<usize, String> {
        usize::try_from(self.u64()?).map_err(|_| "length does not fit in memory".to_string())
    }
}

fn utf8(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "a unicode string is not valid UTF-8".to_string())
}

/// The pickle virtual machine: the stream, the stack and the memo.
struct Machine<'a> {
    r: Reader<'a>,
    stack: Vec<Value>,
    memo: std::collections::HashMap<u64, Value>,
}

impl Machine<'_> {
    fn pop(&mut self, at: usize) -> Result<Value, String> {
        self.stack.pop().ok_or_else(|| format!("stack underflow at offset {at}"))
    }

    /// The items above the topmost mark, mark removed.
    fn pop_mark(&mut self, at: usize) -> Result<Vec<Value>, String> {
        let m = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or_else(|| format!("no mark on the stack at offset {at}"))?;
        let items = self.stack.split_off(m + 1);
        self.stack.pop();
        Ok(items)
    }

    fn top(&self, what: &str) -> Result<Value, String> {
        self.stack.last().cloned().ok_or_else(|| format!("{what} on an empty stack"))
    }

    /// Opcodes that push a literal: the mark, empty containers, None, booleans, integers,
    /// floats, byte and text strings. `None` for any other opcode.
    fn literal(&mut self, op: u8, at: usize) -> Result<Option<Value>, String> {
        let r = &mut self.r;
        Ok(Some(match op {
            b'(' => Value::Mark,
            b'}' => Value::Dict(Vec::new()),
            b']' => Value::List(Vec::new()),
            b')' => Value::Tuple(Vec::new()),
            b'N' => Value::None,
            0x88 => Value::Bool(true),
            0x89 => Value::Bool(false),
            b'K' => Value::Int(i64::from(r.u8()?)),
            b'M' => Value::Int(i64::from(r.u16()?)),
            b'J' => Value::Int(i64::from(r.u32()? as i32)),
            0x8a => {
                let n = r.u8()? as usize;
                let b = r.take(n)?;
                if n > 8 {
                    return Err(format!("integer of {n} bytes at offset {at} is too large"));
                }
                let mut v: i64 = 0;
                for (i, &x) in b.iter().enumerate() {
                    v |= i64::from(x) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                Value::Int(v)
            }
            b'I' | b'L' => {
                let line = r.line()?;
                match line.trim_end_matches('L') {
                    "01" => Value::Bool(true),
                    "00" => Value::Bool(false),
                    t => Value::Int(t.parse().map_err(|_| format!("bad integer {line:?}"))?),
                }
            }
            b'G' => Value::Float(f64::from_be_bytes(r.take(8)?.try_into().expect("8 bytes"))),
            b'F' => {
                let line = r.line()?;
                Value::Float(line.parse().map_err(|_| format!("bad float {line:?}"))?)
            }
            b'U' | b'C' => {
                let n = r.u8()? as usize;
                Value::Bytes(r.take(n)?.into())
            }
            b'T' | b'B' => {
                let n = r.u32()? as usize;
                Value::Bytes(r.take(n)?.into())
            }
            0x8e | 0x96 => {
                let n = r.len_u64()?;
                Value::Bytes(r.take(n)?.into())
            }
            0x8c => {
                let n = r.u8()? as usize;
                Value::Str(utf8(r.take(n)?)?)
            }
            b'X' => {
                let n = r.u32()? as usize;
                Value::Str(utf8(r.take(n)?)?)
            }
            0x8d => {
                let n = r.len_u64()?;
                Value::Str(utf8(r.take(n)?)?)
            }
            _ => return Ok(None),
        }))
    }

    /// The memo opcodes (PUT, GET and their binary forms, MEMOIZE); `false` for others.
    fn memo_op(&mut self, op: u8) -> Result<bool, String> {
        let put = match op {
            b'q' => Some(u64::from(self.r.u8()?)),
            b'r' => Some(u64::from(self.r.u32()?)),
            b'p' => Some(self.r.line()?.parse().map_err(|_| "bad PUT index")?),
            0x94 => Some(self.memo.len() as u64),
            b'h' | b'j' | b'g' => {
                let i = match op {
                    b'h' => u64::from(self.r.u8()?),
                    b'j' => u64::from(self.r.u32()?),
                    _ => self.r.line()?.parse().map_err(|_| "bad GET index")?,
                };
                let v = self.memo.get(&i).cloned().ok_or_else(|| format!("memo {i} unset"))?;
                self.stack.push(v);
                return Ok(true);
            }
            _ => None,
        };
        let Some(i) = put else { return Ok(false) };
        let what = match op {
            b'q' => "BINPUT",
            b'r' => "LONG_BINPUT",
            b'p' => "PUT",
            _ => "MEMOIZE",
        };
        let top = self.top(what)?;
        self.memo.insert(i, top);
        Ok(true)
    }

    /// Opcodes that build or fill lists, tuples and dicts; `false` for others.
    fn collection(&mut self, op: u8, at: usize) -> Result<bool, String> {
        match op {
            b'a' => {
                let v = self.pop(at)?;
                match self.stack.last_mut() {
                    Some(Value::List(l)) => l.push(v),
                    _ => return Err(format!("APPEND to a non-list at offset {at}")),
                }
            }
            b'e' => {
                let items = self.pop_mark(at)?;
                match self.stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    _ => return Err(format!("APPENDS to a non-list at offset {at}")),
                }
            }
            b's' => {
                let v = self.pop(at)?;
                let k = self.pop(at)?;
                match self.stack.last_mut() {
                    Some(Value::Dict(d)) => d.push((k, v)),
                    _ => return Err(format!("SETITEM on a non-dict at offset {at}")),
                }
            }
            b'u' => {
                let items = self.pop_mark(at)?;
                if !items.len().is_multiple_of(2) {
                    return Err(format!("SETITEMS with an odd item count at offset {at}"));
                }
                match self.stack.last_mut() {
                    Some(Value::Dict(d)) => d.extend(pairs(items)),
                    _ => return Err(format!("SETITEMS on a non-dict at offset {at}")),
                }
            }
            b't' => {
                let items = self.pop_mark(at)?;
                self.stack.push(Value::Tuple(items));
            }
            b'l' => {
                let items = self.pop_mark(at)?;
                self.stack.push(Value::List(items));
            }
            b'd' => {
                let items = self.pop_mark(at)?;
                self.stack.push(Value::Dict(pairs(items)));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if self.stack.len() < n {
                    return Err(format!("stack underflow at offset {at}"));
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.stack.push(Value::Tuple(items));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Globals, calls (REDUCE, NEWOBJ), BUILD, and the stack's POP and DUP; `false` for
    /// others.
    fn object(&mut self, op: u8, at: usize) -> Result<bool, String> {
        match op {
            b'c' => {
                let module = self.r.line()?.to_string();
                let name = self.r.line()?.to_string();
                self.stack.push(Value::Global(module, name));
            }
            0x93 => {
                let name = self.pop(at)?;
                let module = self.pop(at)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                    _ => return Err(format!("STACK_GLOBAL without names at offset {at}")),
                }
            }
            b'R' | 0x81 => {
                let args = self.pop(at)?;
                let callable = self.pop(at)?;
                let v = reduce(callable, args).map_err(|e| format!("{e} (offset {at})"))?;
                self.stack.push(v);
            }
            b'b' => {
                let state = self.pop(at)?;
                let obj = self.pop(at)?;
                let v = build(obj, state).map_err(|e| format!("{e} (offset {at})"))?;
                self.stack.push(v);
            }
            b'0' => {
                self.pop(at)?;
            }
            b'2' => {
                let top = self.top("DUP")?;
                self.stack.push(top);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Key-value pairs of a flat list `[k0, v0, k1, v1, ...]` (an odd last item is dropped).
fn pairs(items: Vec<Value>) -> Vec<(Value, Value)> {
    let mut d = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        d.push((k, v));
    }
    d
}

/// Decodes a pickle.
///
/// # Errors
/// A truncated stream, an unknown or unsupported opcode (named with its offset), a malformed
/// NumPy array, a stack underflow.
pub fn parse(bytes: &[u8]) -> Result<Value, String> {
    let mut m = Machine {
        r: Reader { bytes, pos: 0 },
        stack: Vec::new(),
        memo: std::collections::HashMap::new(),
    };
    loop {
        let at = m.r.pos;
        let op = m.r.u8()?;
        match op {
            0x80 => {
                let proto = m.r.u8()?;
                if proto > 5 {
                    return Err(format!("unsupported pickle protocol {proto}"));
                }
            }
            0x95 => {
                m.r.u64()?; // FRAME: a length hint only.
            }
            b'.' => return m.pop(at),
            _ => {
                if let Some(v) = m.literal(op, at)? {
                    m.stack.push(v);
                } else if !(m.memo_op(op)? || m.collection(op, at)? || m.object(op, at)?) {
                    return Err(format!("unsupported pickle opcode 0x{op:02x} at offset {at}"));
                }
            }
        }
    }
}

fn is_numpy(module: &str) -> bool {
    matches!(module, "numpy.core.multiarray" | "numpy._core.multiarray" | "numpy")
}

fn reduce(callable: Value, args: Value) -> Result<Value, String> {
    let Value::Global(module, name) = &callable else {
        return Ok(Value::Object(Box::new(callable), Box::new(args)));
    };
    let arg = |i: usize| match &args {
        Value::Tuple(t) => t.get(i),
        _ => None,
    };
    match (module.as_str(), name.as_str()) {
        ("_codecs", "encode") => match (arg(0), arg(1)) {
            (Some(Value::Str(s)), Some(Value::Str(enc))) if enc == "latin1" || enc == "latin-1" => {
                let b: Result<Vec<u8>, String> = s
                    .chars()
                    .map(|c| u8::try_from(u32::from(c)).map_err(|_| "non-latin1 text".to_string()))
                    .collect();
                Ok(Value::Bytes(b?.into()))
            }
            _ => Err("unsupported _codecs.encode arguments".into()),
        },
        (m, "dtype") if is_numpy(m) => match arg(0) {
            Some(Value::Str(s)) => Ok(Value::Dtype(s.clone(), '|')),
            Some(Value::Bytes(b)) => Ok(Value::Dtype(String::from_utf8_lossy(b).into_owned(), '|')),
            _ => Err("numpy.dtype without a type string".into()),
        },
        ("numpy.core.numeric" | "numpy._core.numeric", "_frombuffer") => {
            // Protocol 5: _frombuffer(buffer, dtype, shape, order).
            match (arg(0), arg(1), arg(2), arg(3)) {
                (
                    Some(Value::Bytes(data)),
                    Some(Value::Dtype(t, o)),
                    Some(Value::Tuple(shape)),
                    order,
                ) => {
                    let shape = shape
                        .iter()
                        .map(as_usize)
                        .collect::<Option<Vec<_>>>()
                        .ok_or("numpy array shape is not a tuple of sizes")?;
                    let fortran = matches!(order, Some(Value::Str(o)) if o == "F");
                    Ok(Value::Array(NdArray {
                        shape,
                        dtype: t.trim_start_matches(['<', '>', '|', '=']).to_string(),
                        order: *o,
                        fortran,
                        data: data.clone(),
                    }))
                }
                _ => Err("unsupported numpy _frombuffer arguments".into()),
            }
        }
        (m, "_reconstruct") if is_numpy(m) => Ok(Value::Array(NdArray {
            shape: vec![0],
            dtype: String::new(),
            order: '|',
            fortran: false,
            data: Rc::from(Vec::new()),
        })),
        _ => Ok(Value::Object(Box::new(callable), Box::new(args))),
    }
}

fn as_usize(v: &Value) -> Option<usize> {
    match v {
        Value::Int(i) => usize::try_from(*i).ok(),
        _ => None,
    }
}

fn build(obj: Value, state: Value) -> Result<Value, String> {
    let Value::Tuple(s) = &state else {
        return Ok(obj); // state for an opaque object: nothing to interpret
    };
    match obj {
        Value::Dtype(t, _) => {
            let order = match s.get(1) {
                Some(Value::Str(o)) => o.chars().next().unwrap_or('|'),
                Some(Value::Bytes(o)) => o.first().map_or('|', |&c| c as char),
                _ => '|',
            };
            Ok(Value::Dtype(t, order))
        }
        Value::Array(_) => {
            // (version, shape, dtype, is_fortran, data)
            if s.len() != 5 {
                return Err(format!("numpy array state has {} fields, expected 5", s.len()));
            }
            let shape = match &s[1] {
                Value::Tuple(d) => d
                    .iter()
                    .map(as_usize)
                    .collect::<Option<Vec<_>>>()
                    .ok_or("numpy array shape is not a tuple of sizes")?,
                _ => return Err("numpy array shape is not a tuple".into()),
            };
            let (dtype, order) = match &s[2] {
                Value::Dtype(t, o) => {
                    let t = t.trim_start_matches(['<', '>', '|', '=']).to_string();
                    (t, *o)
                }
                v => return Err(format!("numpy array dtype is a {}", v.kind())),
            };
            let fortran = matches!(s[3], Value::Bool(true) | Value::Int(1));
            let data = match &s[4] {
                Value::Bytes(b) => b.clone(),
                Value::Str(t) => Rc::from(t.as_bytes()),
                v => return Err(format!("numpy array data is a {}, not raw bytes", v.kind())),
            };
            Ok(Value::Array(NdArray { shape, dtype, order, fortran, data }))
        }
        other => Ok(other),
    }
}

/// Writes pickles of the layouts CIFAR-10 ships in (tests and tools).
pub mod write {
    /// Python 2 `cPickle.dump(d, f, 2)` of `{'batch_label': ..., 'labels': [...], 'data':
    /// uint8 array (n, row), 'filenames': [...]}`, the layout of `cifar-10-batches-py`: byte
    /// strings as `BINSTRING`/`SHORT_BINSTRING`, the array through
    /// `numpy.core.multiarray._reconstruct`.
    pub fn cifar_py2(labels: &[u8], data: &[u8], row: usize) -> Vec<u8> {
        let mut o = vec![0x80, 2, b'}', b'q', 1, b'('];
        let short = |o: &mut Vec<u8>, s: &[u8]| {
            o.push(b'U');
            o.push(s.len() as u8);
            o.extend_from_slice(s);
        };
        short(&mut o, b"batch_label");
        short(&mut o, b"training batch 1 of 5");
        short(&mut o, b"labels");
        o.extend_from_slice(b"]q\x02(");
        for &y in labels {
            o.extend_from_slice(&[b'K', y]);
        }
        o.push(b'e');
        short(&mut o, b"data");
        o.extend_from_slice(b"cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04K\x00\x85U\x01b\x87Rq\x05(K\x01");
        o.push(b'J');
        o.extend_from_slice(&(labels.len() as u32).to_le_bytes());
        o.push(b'M');
        o.extend_from_slice(&(row as u16).to_le_bytes());
        o.extend_from_slice(b"\x86cnumpy\ndtype\nq\x06U\x02u1K\x00K\x01\x87Rq\x07(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T");
        o.extend_from_slice(&(data.len() as u32).to_le_bytes());
        o.extend_from_slice(data);
        o.extend_from_slice(b"tb");
        short(&mut o, b"filenames");
        o.extend_from_slice(b"]q\x08(");
        for i in 0..labels.len() {
            short(&mut o, format!("img_{i}.png").as_bytes());
        }
        o.extend_from_slice(b"eu.");
        o
    }

    /// Python 3 `pickle.dump(d, f, protocol=4)` of the same dict with `str` keys (as a user
    /// re-saving the batches with NumPy 2 gets): framing, `MEMOIZE`, `STACK_GLOBAL`,
    /// `numpy._core.multiarray`, `BINBYTES`, a `SHORT_BINUNICODE` dtype.
    pub fn cifar_py3(labels: &[u8], data: &[u8], row: usize) -> Vec<u8> {
        let mut body = vec![b'}', 0x94, b'('];
        let uni = |o: &mut Vec<u8>, s: &str| {
            o.push(0x8c);
            o.push(s.len() as u8);
            o.extend_from_slice(s.as_bytes());
            o.push(0x94);
        };
        uni(&mut body, "labels");
        body.extend_from_slice(&[b']', 0x94, b'(']);
        for &y in labels {
            body.extend_from_slice(&[b'K', y]);
        }
        body.push(b'e');
        uni(&mut body, "data");
        uni(&mut body, "numpy._core.multiarray");
        uni(&mut body, "_reconstruct");
        body.push(0x93);
        body.push(0x94);
        uni(&mut body, "numpy");
        uni(&mut body, "ndarray");
        body.push(0x93);
        body.push(0x94);
        body.extend_from_slice(&[b'K', 0, 0x85, 0x94, b'C', 1, b'b', 0x94, 0x87, 0x94, b'R', 0x94]);
        body.extend_from_slice(&[b'(', b'K', 1, b'J']);
        body.extend_from_slice(&(labels.len() as u32).to_le_bytes());
        body.push(b'M');
        body.extend_from_slice(&(row as u16).to_le_bytes());
        body.extend_from_slice(&[0x86, 0x94]);
        uni(&mut body, "numpy");
        uni(&mut body, "dtype");
        body.push(0x93);
        body.push(0x94);
        uni(&mut body, "u1");
        body.extend_from_slice(&[0x89, 0x88, 0x87, 0x94, b'R', 0x94, b'(', b'K', 3]);
        uni(&mut body, "|");
        body.extend_from_slice(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t\x94b\x89B");
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
        body.extend_from_slice(&[0x94, b't', 0x94, b'b', b'u', b'.']);
        let mut o = vec![0x80, 4, 0x95];
        o.extend_from_slice(&(body.len() as u64).to_le_bytes());
        o.extend_from_slice(&body);
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python2_and_python3_layouts_decode_to_the_same_arrays() {
        let labels = [3u8, 0, 9];
        let data: Vec<u8> = (0..3 * 6).map(|i| i as u8 * 11).collect();
        for bytes in [write::cifar_py2(&labels, &data, 6), write::cifar_py3(&labels, &data, 6)] {
            let v = parse(&bytes).unwrap();
            let Some(Value::Array(a)) = v.get("data") else { panic!("{v:?}") };
            assert_eq!((a.shape.clone(), a.dtype.as_str(), a.fortran), (vec![3, 6], "u1", false));
            assert_eq!(&a.data[..], &data[..]);
            assert_eq!(
                v.get("labels"),
                Some(&Value::List(labels.iter().map(|&y| Value::Int(i64::from(y))).collect()))
            );
        }
    }

    #[test]
    fn scalars_and_errors() {
        // Protocol 2: (-2 as BININT, 300 as LONG1, 1.5, True, u"é") as a tuple.
        let mut b = vec![0x80, 2, b'(', b'J'];
        b.extend_from_slice(&(-2i32).to_le_bytes());
        b.extend_from_slice(&[0x8a, 2, 0x2c, 0x01, b'G']);
        b.extend_from_slice(&1.5f64.to_be_bytes());
        b.extend_from_slice(&[0x88, b'X', 2, 0, 0, 0, 0xc3, 0xa9, b't', b'.']);
        assert_eq!(
            parse(&b).unwrap(),
            Value::Tuple(vec![
                Value::Int(-2),
                Value::Int(300),
                Value::Float(1.5),
                Value::Bool(true),
                Value::Str("é".into())
            ])
        );
        assert!(parse(&b[..b.len() - 1]).unwrap_err().contains("truncated"));
        assert!(parse(&[0x80, 2, 0xff]).unwrap_err().contains("opcode 0xff at offset 2"));
        assert!(parse(&[0x80, 2, b'.']).unwrap_err().contains("underflow"));
        assert!(parse(&[0x80, 9]).unwrap_err().contains("protocol 9"));
    }
}
