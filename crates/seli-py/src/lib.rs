//! The Python module `seli`: the SELI geometry of a label distribution, the metric set of a
//! model's features, the exact ridge and max-margin solutions, and UFM gradient descent, on
//! NumPy arrays. Every function builds the same record as the matching `seli` command (through
//! seli-io), so Python and the CLI print the same numbers and the same error messages; errors
//! become `ValueError`. Long computations run with the GIL released; `ufm` stops on Ctrl-C.
#![allow(non_snake_case)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use numpy::ndarray::ArrayView2;
use numpy::{PyArray1, PyArray2, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use seli_core::solve::InterruptFlag;
use seli_core::solve::ufm::{Reduction, StepRule};
use seli_core::track::UfmMetrics;
use seli_core::{Geometry, Profile};
use seli_io::arrays::RowSource;
use seli_io::record::ProfileRecord;
use seli_run::analyze::{Layout, check_labels, classifier_matrix};
use seli_run::spec::{DEFAULT_STEP, parse_counts, parse_long_tail, parse_step};
use seli_run::ufm::{Dtype, UfmParams, record_schedule};

/// A `ValueError` with `e`'s message (its whole chain).
/// A checked loss from its Python arguments.
fn loss_of(loss: &str, gamma: f64, tau: f64, bias: bool) -> PyResult<seli_core::Loss> {
    let kind: seli_core::LossKind = loss.parse().map_err(value_error)?;
    seli_core::Loss::new(kind, gamma, tau, bias).map_err(value_error)
}

fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("{e:#}"))
}

/// A `K,R,RHO[,N_MIN]`-style argument: a string as on the command line, or a sequence.
fn spec_text(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(s.to_string());
    }
    let items: Vec<Bound<'_, PyAny>> = obj.try_iter()?.collect::<PyResult<_>>()?;
    let parts =
        items.iter().map(|x| x.str().map(|s| s.to_string())).collect::<PyResult<Vec<_>>>()?;
    Ok(parts.join(","))
}

/// The class-count profile the arguments describe (at most one given; the default STEP
/// profile otherwise): `counts` (a sequence of class sizes), `step`, `long_tail`, or
/// `labels` (a label file path, or an integer array of labels) with `classes`.
fn profile(
    py: Python<'_>,
    counts: Option<&Bound<'_, PyAny>>,
    step: Option<&Bound<'_, PyAny>>,
    long_tail: Option<&Bound<'_, PyAny>>,
    labels: Option<&Bound<'_, PyAny>>,
    classes: Option<usize>,
) -> PyResult<(Profile, Option<PathBuf>)> {
    let step =
        step.map(|s| spec_text(s).and_then(|t| parse_step(&t).map_err(value_error))).transpose()?;
    let long_tail = long_tail
        .map(|s| spec_text(s).and_then(|t| parse_long_tail(&t).map_err(value_error)))
        .transpose()?;
    let counts = counts
        .map(|c| spec_text(c).and_then(|t| parse_counts(&t).map_err(value_error)))
        .transpose()?;
    let mut label_path = None;
    if let Some(l) = labels {
        if l.cast::<PyString>().is_ok() || l.hasattr("__fspath__")? {
            label_path = Some(PathBuf::from(l.call_method0("__str__")?.extract::<String>()?));
        } else {
            if step.is_some() || long_tail.is_some() || counts.is_some() {
                return Err(value_error("give at most one of step, long_tail, counts, labels"));
            }
            let y = label_vector(py, l)?;
            let p = Profile::from_labels(y, classes).map_err(value_error)?;
            return Ok((p, None));
        }
    }
    seli_run::spec::resolve(
        step,
        long_tail,
        counts.as_deref(),
        label_path.as_deref(),
        classes,
        DEFAULT_STEP,
    )
    .map_err(value_error)
}

/// Labels as integers: any integer array or sequence (a CPU tensor too), one dimension.
fn label_vector(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Vec<i64>> {
    let np = py.import("numpy")?;
    let (obj, _) = from_torch(py, "labels", obj)?;
    let a = np.call_method1("asarray", (obj,))?;
    let kind: String = a.getattr("dtype")?.getattr("kind")?.extract()?;
    if kind != "i" && kind != "u" {
        let dtype = a.getattr("dtype")?.str()?.to_string();
        return Err(value_error(format!(
            "labels: dtype {dtype} is not an integer type (labels must be integers)"
        )));
    }
    let shape: Vec<usize> = a.getattr("shape")?.extract()?;
    if shape.len() != 1 {
        return Err(value_error(format!("labels: {}", seli_io::arrays::label_shape_error(&shape))));
    }
    let flat = a.call_method1("reshape", (-1,))?;
    let as64 = flat.call_method1("astype", ("int64",))?;
    if kind == "u" {
        let too_big: bool = flat.call_method0("max")?.gt(i64::MAX as u64)?;
        if too_big {
            return Err(value_error("labels: a label does not fit in 64 bits"));
        }
    }
    as64.extract::<Vec<i64>>()
}

/// A 2-D float array viewed without copying (any strides: C, Fortran, slices). Half
/// precision comes as its bits: IEEE float16, or bfloat16 (the top half of a float32).
enum View<'a> {
    F16(ArrayView2<'a, u16>),
    BF16(ArrayView2<'a, u16>),
    F32(ArrayView2<'a, f32>),
    F64(ArrayView2<'a, f64>),
}

/// An IEEE 754 binary16 value from its bits (exact: every float16 is a float32).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        // Subnormal: frac · 2^-24, normalized for float32.
        (0, f) => {
            let shift = f.leading_zeros() - 21;
            sign | ((113 - shift) << 23) | (((f << shift) & 0x3ff) << 13)
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 112) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// A NumPy matrix as a row source for the streaming metrics.
struct NumpyRows<'a> {
    name: String,
    shape: [usize; 2],
    view: View<'a>,
}

impl RowSource for NumpyRows<'_> {
    fn name(&self) -> &str {
        &self.name
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn rows(&self, start: usize, end: usize) -> seli_io::Result<Vec<f64>> {
        let mut out = Vec::with_capacity((end - start) * self.shape[1]);
        match &self.view {
            View::F16(v) => {
                for r in start..end {
                    out.extend(v.row(r).iter().map(|&x| f64::from(f16_to_f32(x))));
                }
            }
            View::BF16(v) => {
                for r in start..end {
                    out.extend(
                        v.row(r).iter().map(|&x| f64::from(f32::from_bits(u32::from(x) << 16))),
                    );
                }
            }
            View::F32(v) => {
                for r in start..end {
                    out.extend(v.row(r).iter().map(|&x| f64::from(x)));
                }
            }
            View::F64(v) => {
                for r in start..end {
                    out.extend(v.row(r).iter().copied());
                }
            }
        }
        Ok(out)
    }
    fn single(&self) -> bool {
        !matches!(self.view, View::F64(_))
    }
}

/// Borrowed float matrices (kept alive while their views are used).
enum Held<'py> {
    F16(PyReadonlyArray2<'py, u16>),
    BF16(PyReadonlyArray2<'py, u16>),
    F32(PyReadonlyArray2<'py, f32>),
    F64(PyReadonlyArray2<'py, f64>),
}

impl Held<'_> {
    fn rows(&self, name: &str) -> NumpyRows<'_> {
        let (shape, view) = match self {
            Held::F16(a) => (a.shape(), View::F16(a.as_array())),
            Held::BF16(a) => (a.shape(), View::BF16(a.as_array())),
            Held::F32(a) => (a.shape(), View::F32(a.as_array())),
            Held::F64(a) => (a.shape(), View::F64(a.as_array())),
        };
        NumpyRows { name: name.to_string(), shape: [shape[0], shape[1]], view }
    }
}

/// A PyTorch tensor as a NumPy array sharing its memory (`bfloat16` as its 16-bit patterns,
/// with `true`); other objects unchanged. A tensor off the CPU is refused.
fn from_torch<'py>(
    py: Python<'py>,
    name: &str,
    obj: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, bool)> {
    let module: String = obj.get_type().getattr("__module__")?.extract().unwrap_or_default();
    if !module.starts_with("torch") || !obj.hasattr("numpy")? {
        return Ok((obj.clone(), false));
    }
    let device = obj.getattr("device")?.getattr("type")?.str()?.to_string();
    if device != "cpu" {
        return Err(value_error(format!(
            "{name}: a tensor on device '{}': seli reads tensors in CPU memory; pass \
             {name}.cpu() (a copy per batch), or accumulate on the GPU with a CUDA build of \
             seli",
            obj.getattr("device")?.str()?
        )));
    }
    let t = obj.call_method0("detach")?;
    let torch = py.import("torch")?;
    if t.getattr("dtype")?.eq(torch.getattr("bfloat16")?)? {
        let bits = t.call_method1("view", (torch.getattr("int16")?,))?.call_method0("numpy")?;
        return Ok((bits.call_method1("view", ("uint16",))?, true));
    }
    Ok((t.call_method0("numpy")?, false))
}

/// `obj` as a float matrix: NumPy float16/32/64 arrays and CPU PyTorch tensors (bfloat16 too)
/// are viewed without a copy whatever their strides; lists are converted.
fn matrix<'py>(py: Python<'py>, name: &str, obj: &Bound<'py, PyAny>) -> PyResult<Held<'py>> {
    let (obj, bf16) = from_torch(py, name, obj)?;
    let a = py.import("numpy")?.call_method1("asarray", (obj,))?;
    let ndim: usize = a.getattr("ndim")?.extract()?;
    if ndim != 2 {
        let shape: Vec<usize> = a.getattr("shape")?.extract()?;
        return Err(value_error(format!("{name} of shape {shape:?}: expected a matrix (2-D)")));
    }
    if bf16 {
        return Ok(Held::BF16(a.extract()?));
    }
    if let Ok(x) = a.extract::<PyReadonlyArray2<'py, f64>>() {
        return Ok(Held::F64(x));
    }
    if let Ok(x) = a.extract::<PyReadonlyArray2<'py, f32>>() {
        return Ok(Held::F32(x));
    }
    let dtype = a.getattr("dtype")?.str()?.to_string();
    if dtype == "float16" {
        return Ok(Held::F16(a.call_method1("view", ("uint16",))?.extract()?));
    }
    Err(value_error(format!(
        "{name}: dtype {dtype} is not supported (float16, bfloat16, float32 or float64; e.g. \
         x.astype('float32'))"
    )))
}

/// JSON to Python: rectangular lists of numbers become float64 NumPy arrays (1-D, 2-D); lists
/// of whole numbers (counts, class pairs) stay lists; objects become dicts.
fn to_py<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => py.None().into_bound(py),
        J::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
        J::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.into_pyobject(py)?.into_any(),
            (None, Some(u), _) => u.into_pyobject(py)?.into_any(),
            (_, _, f) => f.unwrap_or(f64::NAN).into_pyobject(py)?.into_any(),
        },
        J::String(s) => s.into_pyobject(py)?.into_any(),
        J::Array(items) => {
            let floats: Option<Vec<f64>> = items.iter().map(J::as_f64).collect();
            let is_whole = |x: &J| x.is_i64() || x.is_u64();
            let whole = items
                .iter()
                .all(|x| is_whole(x) || x.as_array().is_some_and(|r| r.iter().all(is_whole)));
            let rows: Option<Vec<Vec<f64>>> = items
                .iter()
                .map(|r| r.as_array().and_then(|r| r.iter().map(J::as_f64).collect()))
                .collect();
            match (floats, rows) {
                (Some(f), _) if !whole && !f.is_empty() => PyArray1::from_vec(py, f).into_any(),
                (_, Some(r))
                    if !whole && !r.is_empty() && r.iter().all(|x| x.len() == r[0].len()) =>
                {
                    PyArray2::from_vec2(py, &r).map_err(value_error)?.into_any()
                }
                _ => {
                    let list = PyList::empty(py);
                    for x in items {
                        list.append(to_py(py, x)?)?;
                    }
                    list.into_any()
                }
            }
        }
        J::Object(m) => {
            let d = PyDict::new(py);
            for (k, x) in m {
                d.set_item(k, to_py(py, x)?)?;
            }
            d.into_any()
        }
    })
}

fn record<'py, T: serde::Serialize>(py: Python<'py>, rec: &T) -> PyResult<Bound<'py, PyAny>> {
    to_py(py, &serde_json::to_value(rec).map_err(value_error)?)
}

fn reduction(s: &str) -> PyResult<Reduction> {
    match s {
        "sum" => Ok(Reduction::Sum),
        "mean" => Ok(Reduction::Mean),
        other => Err(value_error(format!("loss_reduction = '{other}': must be 'sum' or 'mean'"))),
    }
}

/// The exact SELI geometry of a label distribution, as `seli geometry --json` records it.
///
/// Give the class counts one way (default: STEP k = 10, R = 10, rho = 1/2, n_min = 500):
/// `counts` (sizes), `step` ("K,R,RHO[,N_MIN]" or a tuple), `long_tail` ("K,N_MAX,R"), or
/// `labels` (an integer array, or a label file path) with `classes`. With `d`, also a concrete
/// W and M in R^d from a random frame seeded by `seed`.
///
/// Returns a dict (schema seli.geometry.v1): `profile`, `sel` (singular values, norms),
/// `classes`, `groups`, `distances` (`dist_gw_seli_etf`, `dist_gm_seli_etf`), `matrices`
/// (`gram_w`, `gram_m`, `logits`, ETF Grams, cosines as k x k float64 arrays).
///
/// With `loss` (`"cdt"`, `"ldt"`, `"la"`, `"vs"`; `gamma`, `tau`) or `bias=True`: the
/// implicit-geometry target of that loss instead (schema seli.loss-geometry.v1, as
/// `seli geometry --loss ... --json`): `loss`, `target` (certified solve, bias), `classes`,
/// `groups`, `distances` (`dist_gw_seli`, `dist_gw_etf`, ...), `matrices`.
///
/// >>> g = seli.geometry(step="10,100,0.5")
/// >>> g["distances"]["dist_gw_seli_etf"]
/// 0.6339...
/// >>> seli.geometry(step="10,10,0.5", loss="cdt", gamma=0.5)["groups"]["norm_ratio_w"]
#[pyfunction]
#[pyo3(signature = (counts=None, *, step=None, long_tail=None, labels=None, classes=None, d=None, seed=0, loss="ce", gamma=0.0, tau=0.0, bias=false))]
#[allow(clippy::too_many_arguments)]
fn geometry<'py>(
    py: Python<'py>,
    counts: Option<&Bound<'py, PyAny>>,
    step: Option<&Bound<'py, PyAny>>,
    long_tail: Option<&Bound<'py, PyAny>>,
    labels: Option<&Bound<'py, PyAny>>,
    classes: Option<usize>,
    d: Option<usize>,
    seed: u64,
    loss: &str,
    gamma: f64,
    tau: f64,
    bias: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let (p, source) = profile(py, counts, step, long_tail, labels, classes)?;
    let loss = loss_of(loss, gamma, tau, bias)?;
    if !loss.is_plain() {
        if d.is_some() {
            return Err(value_error("d realizes SELI only; leave it out with a loss or bias"));
        }
        let rec = py
            .detach(|| -> seli_core::Result<serde_json::Value> {
                let rec = seli_io::LossGeometryRecord::solve(&p, loss, source.as_deref())?;
                Ok(serde_json::to_value(&rec).unwrap_or_default())
            })
            .map_err(value_error)?;
        return record(py, &rec);
    }
    let rec = py
        .detach(|| -> Result<_, String> {
            let g = Geometry::new(&p).map_err(|e| e.to_string())?;
            let stats = g.stats();
            let real = d
                .map(|d| g.realize(d, seed))
                .transpose()
                .map_err(|e| format!("invalid --d: {e}"))?;
            let rec = seli_io::GeometryRecord::new(&g, &stats, real.as_ref(), source.as_deref());
            serde_json::to_value(&rec).map_err(|e| e.to_string())
        })
        .map_err(value_error)?;
    record(py, &rec)
}

/// The metric set of a model's penultimate features against SELI and the ETF, as
/// `seli analyze --json` records it.
///
/// `features`: (n, d) float16/32/64 or a CPU torch tensor (bfloat16 too), any memory layout
/// (not copied; read `chunk` rows at a time). `labels`: n integers in 0..k. `classifier`: the last layer, (k, d) like
/// `nn.Linear.weight` (`layout="kd"`) or (d, k) (`layout="dk"`); `bias`: k values; `logits`:
/// (n, k), used instead of classifier @ h + bias when given.
///
/// Returns a dict (schema seli.analyze.v1) whose `values` hold the distances of G_W, G_M,
/// W^T M and the logits to SELI and the ETF, NC1 (both centerings), NC2-NC4, accuracy and
/// norms/cosines by majority/minority group. `per_class=True` adds `per_class`, one dict
/// per class (the columns of `seli analyze --per-class`, docs/formats.md);
/// `eval_features`/`eval_labels` add `eval` (held-out accuracy, nearest-class-mean accuracy
/// and NC4 against the training class means), `ood_features` adds `ood` (NC5).
/// `loss`, `gamma`, `tau`: the loss the model was trained with (docs/theory.md §10); the
/// `dist_*_target` values compare with its certified target (a free bias when `bias` is given).
///
/// >>> m = seli.metrics(H, y, model.fc.weight.detach().numpy())
/// >>> m["values"]["dist_gw_seli"], m["values"]["dist_gw_etf"]
#[pyfunction]
#[pyo3(signature = (features, labels, classifier=None, *, bias=None, logits=None, classes=None, layout="kd", chunk=4096, per_class=false, eval_features=None, eval_labels=None, ood_features=None, loss="ce", gamma=0.0, tau=0.0))]
#[allow(clippy::too_many_arguments)]
fn metrics<'py>(
    py: Python<'py>,
    features: &Bound<'py, PyAny>,
    labels: &Bound<'py, PyAny>,
    classifier: Option<&Bound<'py, PyAny>>,
    bias: Option<&Bound<'py, PyAny>>,
    logits: Option<&Bound<'py, PyAny>>,
    classes: Option<usize>,
    layout: &str,
    chunk: usize,
    per_class: bool,
    eval_features: Option<&Bound<'py, PyAny>>,
    eval_labels: Option<&Bound<'py, PyAny>>,
    ood_features: Option<&Bound<'py, PyAny>>,
    loss: &str,
    gamma: f64,
    tau: f64,
) -> PyResult<Bound<'py, PyAny>> {
    let loss = loss_of(loss, gamma, tau, bias.is_some())?;
    if eval_features.is_some() != eval_labels.is_some() {
        return Err(value_error("eval_features and eval_labels go together"));
    }
    let eh = eval_features.map(|f| matrix(py, "eval_features", f)).transpose()?;
    let ey = eval_labels.map(|l| label_vector(py, l)).transpose()?;
    let oh = ood_features.map(|f| matrix(py, "ood_features", f)).transpose()?;
    let h = matrix(py, "features", features)?;
    let y = label_vector(py, labels)?;
    let z = logits.map(|c| matrix(py, "logits", c)).transpose()?;
    let hr = h.rows("features");
    let zr = z.as_ref().map(|z| z.rows("logits"));
    let ehr = eh.as_ref().map(|e| e.rows("eval_features"));
    let ohr = oh.as_ref().map(|o| o.rows("ood_features"));
    let k = check_labels(&hr, &y, Path::new("labels"), classes).map_err(value_error)?.k();
    let (W, b) = last_layer(py, classifier, bias, layout, hr.shape[1], k)?;
    let out = py
        .detach(|| -> seli_io::Result<serde_json::Value> {
            let acc = seli_run::analyze::analyze(
                &hr,
                &y,
                Path::new("labels"),
                classes,
                W.as_ref(),
                b.as_deref(),
                zr.as_ref().map(|z| z as &dyn RowSource),
                chunk,
            )?;
            let ser = |cause| seli_io::Error::Serialize { what: "analysis", cause };
            let mut a = acc.analysis_with(loss.kind, loss.gamma, loss.tau)?;
            if let (Some(eh), Some(ey)) = (&ehr, &ey) {
                a.eval = Some(acc.held_out(eh, ey, Path::new("eval_labels"), None)?);
            }
            if let Some(oh) = &ohr {
                a.ood = Some(acc.ood(oh)?);
            }
            let mut v = serde_json::to_value(a).map_err(ser)?;
            if per_class {
                v["per_class"] = serde_json::to_value(acc.per_class()?).map_err(ser)?;
            }
            Ok(v)
        })
        .map_err(value_error)?;
    to_py(py, &out)
}

/// The exact optimum of the ridge-regularized UFM at class level, with its duality-gap
/// certificate and the thresholds lambda* (X = 0 above) and lambda_mc (minority collapse
/// above), as `seli ridge --json` records it (schema seli.ridge.v1). Give `lam` (both
/// strengths) or `lambda_w` and `lambda_h`; the profile as in `geometry`.
///
/// >>> r = seli.ridge(step="10,10,0.5", lam=0.5)
/// >>> r["solution"]["rank"], r["thresholds"]["lambda_star"]
#[pyfunction]
#[pyo3(signature = (counts=None, *, step=None, long_tail=None, labels=None, classes=None, lam=None, lambda_w=None, lambda_h=None, loss_reduction="sum", tol=1e-10, max_iters=200_000))]
#[allow(clippy::too_many_arguments)]
fn ridge<'py>(
    py: Python<'py>,
    counts: Option<&Bound<'py, PyAny>>,
    step: Option<&Bound<'py, PyAny>>,
    long_tail: Option<&Bound<'py, PyAny>>,
    labels: Option<&Bound<'py, PyAny>>,
    classes: Option<usize>,
    lam: Option<f64>,
    lambda_w: Option<f64>,
    lambda_h: Option<f64>,
    loss_reduction: &str,
    tol: f64,
    max_iters: u64,
) -> PyResult<Bound<'py, PyAny>> {
    let (p, source) = profile(py, counts, step, long_tail, labels, classes)?;
    let lambdas = match (lam, lambda_w, lambda_h) {
        (Some(l), None, None) => (l, l),
        (None, Some(a), Some(b)) => (a, b),
        _ => return Err(value_error("give lam, or lambda_w and lambda_h")),
    };
    let red = reduction(loss_reduction)?;
    let rec = py
        .detach(|| {
            seli_run::solutions::ridge_record(&p, source.as_deref(), red, lambdas, tol, max_iters)
        })
        .map_err(value_error)?;
    record(py, &rec)
}

/// The ridge optimum's geometry along `points` log-spaced strengths from lambda* down to
/// lambda* x `min_fraction`, as `seli ridge-path` records it (schema seli.ridge-path.v1).
#[pyfunction]
#[pyo3(signature = (counts=None, *, step=None, long_tail=None, labels=None, classes=None, points=25, min_fraction=1e-4, loss_reduction="sum", tol=1e-10, max_iters=200_000))]
#[allow(clippy::too_many_arguments)]
fn ridge_path<'py>(
    py: Python<'py>,
    counts: Option<&Bound<'py, PyAny>>,
    step: Option<&Bound<'py, PyAny>>,
    long_tail: Option<&Bound<'py, PyAny>>,
    labels: Option<&Bound<'py, PyAny>>,
    classes: Option<usize>,
    points: usize,
    min_fraction: f64,
    loss_reduction: &str,
    tol: f64,
    max_iters: u64,
) -> PyResult<Bound<'py, PyAny>> {
    let (p, source) = profile(py, counts, step, long_tail, labels, classes)?;
    let red = reduction(loss_reduction)?;
    let rec = py
        .detach(|| {
            seli_run::solutions::ridge_path(
                &p,
                source.as_deref(),
                red,
                tol,
                max_iters,
                points,
                min_fraction,
                || {},
            )
        })
        .map_err(value_error)?;
    record(py, &rec)
}

/// The max-margin (nuclear-norm SVM) solution at class level with its dual certificate, as
/// `seli svm --json` records it (schema seli.svm.v1); the paper's theorem says it is the SEL
/// matrix (`dist_to_sel` ~ 0).
#[pyfunction]
#[pyo3(signature = (counts=None, *, step=None, long_tail=None, labels=None, classes=None, tol=1e-10, max_iters=200_000, seed=0, loss="ce", gamma=0.0, tau=0.0, bias=false))]
#[allow(clippy::too_many_arguments)]
fn svm<'py>(
    py: Python<'py>,
    counts: Option<&Bound<'py, PyAny>>,
    step: Option<&Bound<'py, PyAny>>,
    long_tail: Option<&Bound<'py, PyAny>>,
    labels: Option<&Bound<'py, PyAny>>,
    classes: Option<usize>,
    tol: f64,
    max_iters: u64,
    seed: u64,
    loss: &str,
    gamma: f64,
    tau: f64,
    bias: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let (p, source) = profile(py, counts, step, long_tail, labels, classes)?;
    let loss = loss_of(loss, gamma, tau, bias)?;
    let rec = py
        .detach(|| {
            seli_run::solutions::svm_record(&p, source.as_deref(), &loss, tol, max_iters, seed)
        })
        .map_err(value_error)?;
    record(py, &rec)
}

/// Polls Python's signal handlers (with the GIL) every 50 ms; a pending KeyboardInterrupt
/// stops the run.
struct Signals {
    last: Instant,
    flag: InterruptFlag,
    error: std::sync::Arc<Mutex<Option<PyErr>>>,
}

impl Signals {
    fn poll(&mut self) {
        if self.last.elapsed() >= Duration::from_millis(50) {
            self.last = Instant::now();
            if let Err(e) = Python::attach(|py| py.check_signals()) {
                if let Ok(mut slot) = self.error.lock() {
                    *slot = Some(e);
                }
                self.flag.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// Collects the metrics rows of an in-memory run and polls for Ctrl-C.
struct Collect {
    rows: Vec<Vec<Option<f64>>>,
    signals: Signals,
}

impl seli_run::watch::Watch for Collect {
    fn progress(&mut self, _done: u64) -> std::result::Result<(), String> {
        self.signals.poll();
        Ok(())
    }
    fn row(
        &mut self,
        _: &[(&str, &str)],
        values: &[Option<f64>],
    ) -> std::result::Result<(), String> {
        self.rows.push(values.to_vec());
        Ok(())
    }
}

/// Gradient descent on the unconstrained-features model (UFM), tracked against SELI and the
/// ETF, as `seli ufm` runs it but in memory. The profile as in `geometry`; the other arguments
/// are `seli ufm`'s flags (`schedule`: "norm-grad", "norm-loss", "constant" or
/// "step:FACTOR@I1,I2"; metrics recorded `every` N iterations or `log_every` P per decade,
/// default 10 per decade).
///
/// Returns a dict: `metrics` (column name -> float64 array, one entry per recorded iteration,
/// NaN where undefined; the columns of metrics.csv), `config` (the checked configuration, as
/// `seli ufm` writes it to config.json), `termination`, `message`, `iters_done`,
/// `targets` (`dist_gw_seli_etf`, `dist_gm_seli_etf`, `nuclear_norm`). Runs without the GIL;
/// Ctrl-C raises KeyboardInterrupt within about 50 ms.
///
/// `loss`, `gamma`, `tau` choose a loss family (docs/theory.md §10); `dist_gw_target` and
/// `dist_gm_target` then compare with that loss's certified target.
///
/// >>> r = seli.ufm(step="10,10,0.5,5", d=32, iters=2000)
/// >>> r["metrics"]["dist_gw_seli"][-1]
#[pyfunction]
#[pyo3(signature = (counts=None, *, step=None, long_tail=None, labels=None, classes=None, d=64, iters=10_000, lr=0.01, schedule="norm-grad", lambda_w=0.0, lambda_h=0.0, bias=false, loss_reduction="sum", dtype="f64", seed=0, init_scale=0.1, every=None, log_every=None, grad_tol=None, threads=0, loss="ce", gamma=0.0, tau=0.0))]
#[allow(clippy::too_many_arguments)]
fn ufm<'py>(
    py: Python<'py>,
    counts: Option<&Bound<'py, PyAny>>,
    step: Option<&Bound<'py, PyAny>>,
    long_tail: Option<&Bound<'py, PyAny>>,
    labels: Option<&Bound<'py, PyAny>>,
    classes: Option<usize>,
    d: usize,
    iters: u64,
    lr: f64,
    schedule: &str,
    lambda_w: f64,
    lambda_h: f64,
    bias: bool,
    loss_reduction: &str,
    dtype: &str,
    seed: u64,
    init_scale: f64,
    every: Option<u64>,
    log_every: Option<u64>,
    grad_tol: Option<f64>,
    threads: usize,
    loss: &str,
    gamma: f64,
    tau: f64,
) -> PyResult<Bound<'py, PyAny>> {
    let (p, source) = profile(py, counts, step, long_tail, labels, classes)?;
    let loss = loss_of(loss, gamma, tau, bias)?;
    let params = UfmParams {
        loss: loss.kind,
        gamma,
        tau,
        d,
        iters,
        lr,
        step_rule: StepRule::parse(schedule).map_err(value_error)?,
        lambda_w,
        lambda_h,
        bias,
        loss_reduction: seli_run::ufm::parse_reduction(loss_reduction).map_err(value_error)?,
        dtype: match dtype {
            "f32" => Dtype::F32,
            "f64" => Dtype::F64,
            other => return Err(value_error(format!("dtype = {other}: must be f32 or f64"))),
        },
        seed,
        init_scale,
        grad_tol,
        record: record_schedule(every, log_every).map_err(value_error)?,
        threads,
        ..UfmParams::new(ProfileRecord::new(&p, source.as_deref()))
    };
    let cfg = params.check().map_err(value_error)?;
    let error = std::sync::Arc::new(Mutex::new(None));
    let flag: InterruptFlag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let signals = Signals { last: Instant::now(), flag: flag.clone(), error: error.clone() };
    let mut collect = Collect { rows: Vec::new(), signals };
    let outcome = py
        .detach(|| seli_run::ufm::execute(&cfg, None, false, &mut collect, flag))
        .map_err(value_error)?;
    if let Some(e) = error.lock().ok().and_then(|mut e| e.take()) {
        return Err(e);
    }
    let run = (collect.rows, outcome);
    let out = PyDict::new(py);
    let metrics = PyDict::new(py);
    for (j, (name, _)) in UfmMetrics::columns().iter().enumerate() {
        let col: Vec<f64> = run.0.iter().map(|r| r[j].unwrap_or(f64::NAN)).collect();
        metrics.set_item(*name, PyArray1::from_vec(py, col))?;
    }
    out.set_item("metrics", metrics)?;
    out.set_item("config", record(py, &cfg)?)?;
    let summary = &run.1.summary;
    out.set_item("termination", &summary.termination)?;
    out.set_item("message", &summary.message)?;
    out.set_item("iters_done", summary.iters_done)?;
    let targets = PyDict::new(py);
    targets.set_item("dist_gw_seli_etf", summary.targets.dist_gw_seli_etf)?;
    targets.set_item("dist_gm_seli_etf", summary.targets.dist_gm_seli_etf)?;
    targets.set_item("nuclear_norm", summary.targets.nuclear_norm)?;
    out.set_item("targets", targets)?;
    Ok(out.into_any())
}

/// A classifier `W` (d×k) and its bias, each optional.
type LastLayer = (Option<faer::Mat<f64>>, Option<Vec<f64>>);

/// The classifier `W` (d×k) from a matrix in `layout` ("kd": rows are classes, as
/// `nn.Linear.weight`; "dk"), and the bias as float64.
fn last_layer(
    py: Python<'_>,
    classifier: Option<&Bound<'_, PyAny>>,
    bias: Option<&Bound<'_, PyAny>>,
    layout: &str,
    d: usize,
    k: usize,
) -> PyResult<LastLayer> {
    let layout = match layout {
        "kd" => Layout::Kd,
        "dk" => Layout::Dk,
        other => return Err(value_error(format!("layout = '{other}': must be 'kd' or 'dk'"))),
    };
    let W = match classifier {
        None => None,
        Some(c) => {
            let held = matrix(py, "classifier", c)?;
            Some(classifier_matrix(&held.rows("classifier"), layout, d, k).map_err(value_error)?)
        }
    };
    let b: Option<Vec<f64>> = bias
        .map(|b| {
            let (b, _) = from_torch(py, "bias", b)?;
            py.import("numpy")?
                .call_method1("asarray", (b, "float64"))?
                .call_method1("reshape", (-1,))?
                .extract()
        })
        .transpose()?;
    Ok((W, b))
}

/// Accumulates the metrics of `seli.metrics` batch by batch, inside a training loop or across
/// workers, in memory O(k·d + d²) whatever the number of samples.
///
/// ``add(features, labels, logits=None)`` takes a batch: features (b, d) as NumPy float16/32/64
/// arrays or CPU PyTorch tensors (bfloat16 too), in any layout, read without a copy; labels
/// (b,) integers in 0..k; logits (b, k) when you have them, else ``W^T h + b`` from the
/// classifier given here. ``merge(other)`` adds another accumulator (another worker's, or one
/// sent as ``to_bytes()``; pickling works too): any batching and any merge order give the
/// single-pass values. ``metrics()`` returns the record ``seli.metrics`` returns for all the
/// samples at once.
///
/// Two columns need the final class means and so a second pass over the same samples:
/// ``ncc_mismatch`` (NC4) and the exact ``dist_z`` (pass 1 gives its streaming form). Feed
/// the samples again with ``add_second`` (after merging the first passes, when workers
/// share the work; second passes then merge too). Without it they are None and approximate.
///
/// ``scatter="full"`` (default) keeps the d×d within-class scatter: NC1 after one pass, at
/// O(b·d²) per batch. ``scatter="projected"`` keeps none: NC1 (``nc1``, ``nc1_global``) then
/// comes from ``add_second``, which projects the deviations onto the span of the class means,
/// O(b·d·k) per batch (what ``seli.metrics`` does; much faster when k is well below d).
///
/// >>> acc = seli.Accumulator(10, 512, model.fc.weight)
/// >>> for x, y in loader:
/// ...     acc.add(model.features(x), y)
/// >>> acc.metrics()["values"]["dist_gw_seli"]
#[pyclass(name = "Accumulator", module = "seli")]
struct PyAccumulator {
    inner: seli_run::analyze::Accumulator,
}

#[pymethods]
impl PyAccumulator {
    #[new]
    #[pyo3(signature = (k, d, classifier=None, *, bias=None, layout="kd", scatter="full"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        k: usize,
        d: usize,
        classifier: Option<&Bound<'_, PyAny>>,
        bias: Option<&Bound<'_, PyAny>>,
        layout: &str,
        scatter: &str,
    ) -> PyResult<Self> {
        let kind = match scatter {
            "full" => seli_core::features::WithinScatter::Full,
            "projected" => seli_core::features::WithinScatter::Projected,
            other => {
                return Err(value_error(format!(
                    "scatter '{other}': expected 'full' or 'projected'"
                )));
            }
        };
        let (W, b) = last_layer(py, classifier, bias, layout, d, k)?;
        let inner = seli_run::analyze::Accumulator::new(k, d, W, b)
            .and_then(|a| a.with_within_scatter(kind))
            .map_err(value_error)?;
        Ok(PyAccumulator { inner })
    }

    /// Adds a batch to the first pass.
    #[pyo3(signature = (features, labels, logits=None))]
    fn add(
        &mut self,
        py: Python<'_>,
        features: &Bound<'_, PyAny>,
        labels: &Bound<'_, PyAny>,
        logits: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.feed(py, features, labels, logits, false)
    }

    /// Adds a batch to the second pass (the same samples again, any batching).
    #[pyo3(signature = (features, labels, logits=None))]
    fn add_second(
        &mut self,
        py: Python<'_>,
        features: &Bound<'_, PyAny>,
        labels: &Bound<'_, PyAny>,
        logits: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.feed(py, features, labels, logits, true)
    }

    /// Merges another accumulator (of other samples) into this one.
    fn merge(&mut self, other: PyRef<'_, PyAccumulator>) -> PyResult<()> {
        self.inner.merge(&other.inner).map_err(value_error)
    }

    /// The record of ``seli.metrics`` for every sample added (schema seli.analyze.v1); ``loss``,
    /// ``gamma``, ``tau`` name the training loss whose target the ``dist_*_target`` values
    /// compare with.
    #[pyo3(signature = (*, loss="ce", gamma=0.0, tau=0.0))]
    fn metrics<'py>(
        &self,
        py: Python<'py>,
        loss: &str,
        gamma: f64,
        tau: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let loss = loss_of(loss, gamma, tau, false)?;
        let out = py
            .detach(|| -> seli_io::Result<serde_json::Value> {
                let a = self.inner.analysis_with(loss.kind, loss.gamma, loss.tau)?;
                serde_json::to_value(&a)
                    .map_err(|cause| seli_io::Error::Serialize { what: "analysis", cause })
            })
            .map_err(value_error)?;
        to_py(py, &out)
    }

    /// The per-class view (one dict per class, the columns of ``seli analyze --per-class``):
    /// count, group, norms, cosines to the SELI and ETF positions, within-class variance and
    /// share, NCC agreement (after ``add_second``; None before).
    fn per_class<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let out = py
            .detach(|| -> seli_io::Result<serde_json::Value> {
                serde_json::to_value(self.inner.per_class()?)
                    .map_err(|cause| seli_io::Error::Serialize { what: "per-class view", cause })
            })
            .map_err(value_error)?;
        to_py(py, &out)
    }

    /// Held-out samples against the class means of the first pass: accuracy (from ``logits``,
    /// else the classifier), nearest-class-mean accuracy and NC4, as ``seli.metrics(...,
    /// eval_features=, eval_labels=)`` reports them under ``eval``.
    #[pyo3(signature = (features, labels, logits=None))]
    fn held_out<'py>(
        &self,
        py: Python<'py>,
        features: &Bound<'py, PyAny>,
        labels: &Bound<'py, PyAny>,
        logits: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let h = matrix(py, "features", features)?;
        let y = label_vector(py, labels)?;
        let z = logits.map(|z| matrix(py, "logits", z)).transpose()?;
        let (hr, zr) = (h.rows("features"), z.as_ref().map(|z| z.rows("logits")));
        let inner = &self.inner;
        let out = py
            .detach(|| -> seli_io::Result<serde_json::Value> {
                let z = zr.as_ref().map(|z| z as &dyn RowSource);
                let r = inner.held_out(&hr, &y, Path::new("labels"), z)?;
                serde_json::to_value(r)
                    .map_err(|cause| seli_io::Error::Serialize { what: "held-out record", cause })
            })
            .map_err(value_error)?;
        to_py(py, &out)
    }

    /// NC5 of out-of-distribution features against the class means of the first pass, as
    /// ``seli.metrics(..., ood_features=)`` reports it under ``ood``.
    fn ood<'py>(
        &self,
        py: Python<'py>,
        features: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let h = matrix(py, "ood_features", features)?;
        let hr = h.rows("ood_features");
        let inner = &self.inner;
        let out = py
            .detach(|| -> seli_io::Result<serde_json::Value> {
                serde_json::to_value(inner.ood(&hr)?)
                    .map_err(|cause| seli_io::Error::Serialize { what: "OOD record", cause })
            })
            .map_err(value_error)?;
        to_py(py, &out)
    }

    /// The accumulator as bytes (format seli.accumulator.v1), to send to another process.
    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        let b = self.inner.to_bytes().map_err(value_error)?;
        Ok(pyo3::types::PyBytes::new(py, &b))
    }

    /// An accumulator from ``to_bytes()``.
    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<Self> {
        let inner =
            seli_run::analyze::Accumulator::from_bytes(data, Path::new("accumulator bytes"))
                .map_err(value_error)?;
        Ok(PyAccumulator { inner })
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let bytes = slf.borrow().to_bytes(py)?;
        let rebuild = slf.get_type().getattr("from_bytes")?;
        Ok((rebuild, (bytes,)).into_pyobject(py)?.into_any())
    }

    /// Samples in the first pass.
    #[getter]
    fn n(&self) -> u64 {
        self.inner.n()
    }

    /// Classes.
    #[getter]
    fn k(&self) -> usize {
        self.inner.classes()
    }

    /// Feature dimension.
    #[getter]
    fn d(&self) -> usize {
        self.inner.dim()
    }

    /// Samples per class so far.
    #[getter]
    fn counts(&self) -> Vec<u64> {
        self.inner.counts().to_vec()
    }

    fn __repr__(&self) -> String {
        format!(
            "seli.Accumulator(k={}, d={}, n={})",
            self.inner.classes(),
            self.inner.dim(),
            self.inner.n()
        )
    }
}

impl PyAccumulator {
    fn feed(
        &mut self,
        py: Python<'_>,
        features: &Bound<'_, PyAny>,
        labels: &Bound<'_, PyAny>,
        logits: Option<&Bound<'_, PyAny>>,
        second: bool,
    ) -> PyResult<()> {
        let h = matrix(py, "features", features)?;
        let y = label_vector(py, labels)?;
        let z = logits.map(|z| matrix(py, "logits", z)).transpose()?;
        let hr = h.rows("features");
        let zr = z.as_ref().map(|z| z.rows("logits"));
        let inner = &mut self.inner;
        py.detach(|| {
            let z = zr.as_ref().map(|z| z as &dyn RowSource);
            if second { inner.add_second(&hr, &y, z) } else { inner.add(&hr, &y, z) }
        })
        .map_err(value_error)
    }
}

/// SELI geometry (Simplex-Encoded-Labels Interpolation) of classifiers under class imbalance:
/// exact targets, metrics of a model's features, exact solvers and UFM runs on NumPy arrays.
#[pymodule]
fn seli(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(geometry, m)?)?;
    m.add_function(wrap_pyfunction!(metrics, m)?)?;
    m.add_class::<PyAccumulator>()?;
    m.add_function(wrap_pyfunction!(ridge, m)?)?;
    m.add_function(wrap_pyfunction!(ridge_path, m)?)?;
    m.add_function(wrap_pyfunction!(svm, m)?)?;
    m.add_function(wrap_pyfunction!(ufm, m)?)?;
    Ok(())
}
