//! A tract ONNX graph, loaded once (typed, optimised, symbolic batch) and reused.
//! Nothing tract-specific leaves this file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

use super::EncoderError;

type Plan = Arc<TypedRunnableModel>;

/// Element type of a graph's single input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InputType {
    F32,
    I64,
}

/// A loaded graph with one input of shape `[batch, rest...]` and one f32 output
/// of shape `[batch, out...]`.
pub(crate) struct Graph {
    plan: Plan,
    /// The threads tract's matrix products run on.
    executor: Executor,
    file: PathBuf,
    input_rest: Vec<usize>,
    output_rest: Vec<usize>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("file", &self.file)
            .field("input_rest", &self.input_rest)
            .field("output_rest", &self.output_rest)
            .finish()
    }
}

fn onnx_err(file: &Path, e: impl std::fmt::Display) -> EncoderError {
    EncoderError::Onnx {
        file: file.to_path_buf(),
        message: format!("{e:#}"),
    }
}

impl Graph {
    /// Loads `file`, declares its input as `[batch, input_rest...]` of `ty` with a
    /// symbolic batch, optimises it, and checks that the output is
    /// `[batch, expected_output...]`. Runs use `executor`'s threads.
    pub(crate) fn load(
        file: &Path,
        ty: InputType,
        input_rest: &[usize],
        expected_output: &[usize],
        executor: Executor,
    ) -> Result<Self, EncoderError> {
        let mut model = tract_onnx::onnx()
            .model_for_path(file)
            .map_err(|e| onnx_err(file, e))?;
        if model.inputs.len() != 1 || model.outputs.len() != 1 {
            return Err(EncoderError::ModelShape {
                file: file.to_path_buf(),
                what: "number of inputs and outputs".into(),
                expected: "1 input, 1 output".into(),
                found: format!(
                    "{} inputs, {} outputs",
                    model.inputs.len(),
                    model.outputs.len()
                ),
            });
        }
        let batch = model.sym("batch");
        let mut shape: TVec<TDim> = tvec![batch.clone().into()];
        shape.extend(input_rest.iter().map(|&d| TDim::from(d)));
        let dt = match ty {
            InputType::F32 => f32::datum_type(),
            InputType::I64 => i64::datum_type(),
        };
        model
            .set_input_fact(0, InferenceFact::dt_shape(dt, shape))
            .map_err(|e| onnx_err(file, e))?;
        let typed = model.into_typed().map_err(|e| onnx_err(file, e))?;

        let out_fact = typed.output_fact(0).map_err(|e| onnx_err(file, e))?.clone();
        let mut expected: Vec<TDim> = vec![batch.into()];
        expected.extend(expected_output.iter().map(|&d| TDim::from(d)));
        let found: Vec<TDim> = out_fact.shape.iter().cloned().collect();
        if found != expected || out_fact.datum_type != f32::datum_type() {
            return Err(EncoderError::ModelShape {
                file: file.to_path_buf(),
                what: "output".into(),
                expected: format!("f32 {}", fmt_dims(&expected)),
                found: format!("{:?} {}", out_fact.datum_type, fmt_dims(&found)),
            });
        }
        let plan = typed
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| onnx_err(file, e))?;
        Ok(Self {
            plan,
            executor,
            file: file.to_path_buf(),
            input_rest: input_rest.to_vec(),
            output_rest: expected_output.to_vec(),
        })
    }

    /// Elements of the output per batch item.
    pub(crate) fn output_len(&self) -> usize {
        self.output_rest.iter().product()
    }

    fn input_len(&self) -> usize {
        self.input_rest.iter().product()
    }

    /// Runs a batch given as a flat f32 buffer `[batch, input_rest...]`.
    pub(crate) fn run_f32(&self, batch: usize, input: &[f32]) -> Result<Vec<f32>, EncoderError> {
        self.check_len(batch, input.len())?;
        let mut shape = vec![batch];
        shape.extend(&self.input_rest);
        let t = Tensor::from_shape(&shape, input).map_err(|e| onnx_err(&self.file, e))?;
        self.run(batch, t)
    }

    /// Runs a batch given as a flat i64 buffer `[batch, input_rest...]`.
    pub(crate) fn run_i64(&self, batch: usize, input: &[i64]) -> Result<Vec<f32>, EncoderError> {
        self.check_len(batch, input.len())?;
        let mut shape = vec![batch];
        shape.extend(&self.input_rest);
        let t = Tensor::from_shape(&shape, input).map_err(|e| onnx_err(&self.file, e))?;
        self.run(batch, t)
    }

    fn check_len(&self, batch: usize, len: usize) -> Result<(), EncoderError> {
        if batch == 0 || len != batch * self.input_len() {
            return Err(EncoderError::InputLength {
                file: self.file.clone(),
                expected: batch * self.input_len(),
                found: len,
            });
        }
        Ok(())
    }

    fn run(&self, batch: usize, input: Tensor) -> Result<Vec<f32>, EncoderError> {
        let out =
            multithread_tract_scope(self.executor.clone(), || self.plan.run(tvec![input.into()]))
                .map_err(|e| onnx_err(&self.file, e))?;
        let view = out[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| onnx_err(&self.file, e))?;
        let values: Vec<f32> = view.iter().copied().collect();
        if values.len() != batch * self.output_len() {
            return Err(onnx_err(
                &self.file,
                format!(
                    "output has {} values, expected {}",
                    values.len(),
                    batch * self.output_len()
                ),
            ));
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(EncoderError::NonFinite {
                file: self.file.clone(),
                index: i,
            });
        }
        Ok(values)
    }
}

/// An executor of `threads` threads for [`Graph::load`] (one thread: the caller's).
pub(crate) fn executor(threads: usize) -> Executor {
    if threads > 1 {
        Executor::multithread_with_name(threads, "anytime-trunk")
    } else {
        Executor::SingleThread
    }
}

fn fmt_dims(d: &[TDim]) -> String {
    let parts: Vec<String> = d.iter().map(|x| x.to_string()).collect();
    format!("[{}]", parts.join(", "))
}
