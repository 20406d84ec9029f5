//! Reading and writing the tensors of burn's flex backend (the CPU) directly, for the fused
//! operations of [`linear`](crate::linear), [`norm`](crate::norm) and [`optim`](crate::optim).

use std::borrow::Cow;

use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::ops::{Backward, NodeGuard, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::tensor::{Bytes, DType, Shape, Tensor};
use burn_flex::{FlexTensor, Layout};

/// The f32 tensor's values in row-major order (copied only when it is not contiguous).
pub(crate) fn values(t: &FlexTensor) -> Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(v) => Cow::Borrowed(v),
        None => Cow::Owned(t.to_contiguous().as_slice::<f32>().expect("contiguous").to_vec()),
    }
}

/// A contiguous f32 tensor holding `v` (its buffer, without a copy).
pub(crate) fn tensor(v: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::new(Bytes::from_elems(v), Layout::contiguous(shape), DType::F32)
}

/// A contiguous f32 tensor that the caller owns alone: `t` itself when it already is one, else
/// a copy, so that it can be written in place.
pub(crate) fn owned(mut t: FlexTensor) -> FlexTensor {
    let n = t.layout().shape().num_elements();
    if t.layout().contiguous_offsets() == Some((0, n)) && t.try_storage_mut::<f32>().is_some() {
        t
    } else {
        tensor(values(&t).into_owned(), t.layout().shape().clone())
    }
}

/// `t` itself (a shared handle) when it is contiguous, else a contiguous copy.
pub(crate) fn contiguous(t: &FlexTensor) -> FlexTensor {
    match t.as_slice::<f32>() {
        Some(_) => t.clone(),
        None => tensor(values(t).into_owned(), t.layout().shape().clone()),
    }
}

/// `output` of the operation `op` on `parents`, registered with burn's autodiff: `op` gets
/// `state` back in the backward pass when some parent is tracked.
pub(crate) fn record<O: Backward<Flex, N>, const N: usize, const D: usize>(
    op: O,
    parents: [NodeGuard; N],
    state: O::State,
    output: FlexTensor,
) -> Tensor<D> {
    let out = match op.prepare::<NoCheckpointing>(parents).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(state, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Tensor::from_primitive::<Autodiff<Flex>>(out)
}
