//! Import of the PyTorch reference's checkpoints.
//!
//! `crates/models/tools/export_pytorch.py` (Python, with torch) turns a
//! reference run's `best.ckpt` into `weights.safetensors` (the `state_dict`
//! without its `model.` prefix, PyTorch layouts) and `export.json` (the
//! model config, each feature map's `seed / steps / redraws`, the run's
//! `config.json` and `results.json`). [`import`] builds the Rust model from
//! them: Linear weights are transposed (PyTorch stores `(out, in)`, Burn
//! `(in, out)`), LayerNorm `weight / bias` become `gamma / beta`, the
//! feed-forward's `ff.0 / ff.3` become `ff_up / ff_down`, and every random
//! projection is kept as drawn, with its seed and draw index.

use std::collections::HashMap;
use std::path::Path;

use burn::module::Param;
use burn::nn::{LayerNorm, Linear};
use burn::prelude::*;

use crate::classifier::{ContentEmbedding, ImageClassifier, LayerPositions};
use crate::config::ModelConfig;
use crate::error::ModelError;

/// An exported reference run: tensors by name and the export's JSON.
#[derive(Debug, Clone)]
pub struct PytorchExport {
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    /// `export.json`.
    pub meta: serde_json::Value,
}

fn bad(dir: &Path, what: impl std::fmt::Display) -> ModelError {
    ModelError::Input(format!(
        "{}: {what}; export the run again with crates/models/tools/export_pytorch.py",
        dir.display()
    ))
}

impl PytorchExport {
    /// Reads `dir/weights.safetensors` and `dir/export.json`.
    pub fn read(dir: &Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(dir.join("weights.safetensors"))
            .map_err(|e| bad(dir, format!("weights.safetensors: {e}")))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(dir, format!("weights.safetensors is not readable ({e})")))?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(bad(
                    dir,
                    format!("tensor {name} is {:?}, float32 expected", view.dtype()),
                ));
            }
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            tensors.insert(name.to_string(), (view.shape().to_vec(), data));
        }
        let text = std::fs::read_to_string(dir.join("export.json"))
            .map_err(|e| bad(dir, format!("export.json: {e}")))?;
        let meta = serde_json::from_str(&text)
            .map_err(|e| bad(dir, format!("export.json is not JSON ({e})")))?;
        Ok(PytorchExport { tensors, meta })
    }

    /// The model config recorded in the export.
    pub fn config(&self) -> Result<ModelConfig, ModelError> {
        ModelConfig::from_json(&self.meta["model_config"].to_string())
    }
}

struct Loader<'a, B: Backend> {
    export: &'a PytorchExport,
    device: &'a B::Device,
    used: usize,
}

impl<B: Backend> Loader<'_, B> {
    fn tensor<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Tensor<B, D>, ModelError> {
        let (got, data) = self.export.tensors.get(name).ok_or_else(|| {
            ModelError::Input(format!(
                "the checkpoint has no tensor {name}: it is from another model or version"
            ))
        })?;
        if got.as_slice() != shape.as_slice() {
            return Err(ModelError::Input(format!(
                "tensor {name} has shape {got:?}, the model needs {shape:?}: the weights do not fit this config"
            )));
        }
        self.used += 1;
        Ok(Tensor::from_data(
            TensorData::new(data.clone(), shape),
            self.device,
        ))
    }

    fn param<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Param<Tensor<B, D>>, ModelError> {
        Ok(Param::from_tensor(self.tensor(name, shape)?))
    }

    fn linear(&mut self, name: &str, l: &mut Linear<B>) -> Result<(), ModelError> {
        let [i, o] = l.weight.dims();
        l.weight = Param::from_tensor(
            self.tensor::<2>(&format!("{name}.weight"), [o, i])?
                .transpose(),
        );
        if l.bias.is_some() {
            l.bias = Some(self.param(&format!("{name}.bias"), [o])?);
        }
        Ok(())
    }

    fn norm(&mut self, name: &str, n: &mut LayerNorm<B>) -> Result<(), ModelError> {
        let [d] = n.gamma.dims();
        n.gamma = self.param(&format!("{name}.weight"), [d])?;
        n.beta = Some(self.param(&format!("{name}.bias"), [d])?);
        Ok(())
    }
}

/// The reference run `export` as a Rust model on `device`.
pub fn import<B: Backend>(
    export: &PytorchExport,
    device: &B::Device,
) -> Result<ImageClassifier<B>, ModelError> {
    let config = export.config()?;
    let mut model: ImageClassifier<B> = config.init(0, device)?;
    let mut l = Loader {
        export,
        device,
        used: 0,
    };
    match &mut model.content {
        ContentEmbedding::Linear(lin) => l.linear("content_embedding.net", lin)?,
        ContentEmbedding::Mlp(m) => {
            l.linear("content_embedding.net.0", &mut m.first)?;
            l.linear("content_embedding.net.2", &mut m.second)?;
        }
        ContentEmbedding::Lookup(e) => {
            let dims = e.weight.dims();
            e.weight = l.param("content_embedding.net.weight", dims)?;
        }
    }
    let dims = model.class_token.dims();
    model.class_token = l.param("class_token", dims)?;
    if let Some(abs) = &mut model.absolute {
        let dims = abs.frequencies.dims();
        abs.frequencies = l.param("positional.encoding.frequencies", dims)?;
    }
    if let Some(grid) = &mut model.grid {
        let dims = grid.frequencies.dims();
        grid.frequencies = l.param("positional.features.frequencies", dims)?;
    }
    let maps = &export.meta["feature_maps"];
    for (i, block) in model.blocks.iter_mut().enumerate() {
        let p = format!("blocks.{i}");
        l.norm(&format!("{p}.attn_norm"), &mut block.attn_norm)?;
        l.norm(&format!("{p}.ff_norm"), &mut block.ff_norm)?;
        l.linear(&format!("{p}.ff.0"), &mut block.ff_up)?;
        l.linear(&format!("{p}.ff.3"), &mut block.ff_down)?;
        let attn = &mut block.attn;
        l.linear(&format!("{p}.attn.to_qkv"), &mut attn.to_qkv)?;
        l.linear(&format!("{p}.attn.to_out"), &mut attn.to_out)?;
        match &mut attn.positions {
            LayerPositions::Content(_) => {}
            LayerPositions::Constrained(c) => {
                let dims = c.alpha.dims();
                c.alpha = l.param(&format!("{p}.attn.qk_extension.alpha"), dims)?;
                c.beta = l.param(&format!("{p}.attn.qk_extension.beta"), dims)?;
                if let Some(lin) = &mut c.to_alpha_beta {
                    l.linear(&format!("{p}.attn.qk_extension.to_alpha_beta"), lin)?;
                }
            }
            LayerPositions::Clipped(r) => {
                let dims = r.keys.dims();
                r.keys = l.param(&format!("{p}.attn.relative_keys"), dims)?;
            }
            LayerPositions::Periodic(f) => {
                let dims = f.coefficients.dims();
                f.coefficients = l.param(&format!("{p}.attn.coefficients"), dims)?;
                let dims = f.floor.dims();
                f.floor = l.param(&format!("{p}.attn.floor"), dims)?;
                if let Some(lin) = &mut f.to_coefficients {
                    l.linear(&format!("{p}.attn.to_coefficients"), lin)?;
                }
            }
        }
        if let Some(map) = attn.features.take() {
            let key = format!("{p}.attn.feature_map");
            let state = &maps[&key];
            let (seed, redraws) = (state["seed"].as_u64(), state["redraws"].as_u64());
            let (Some(seed), Some(redraws)) = (seed, redraws) else {
                return Err(ModelError::Input(format!(
                    "the export has no seed and redraw count for {key}"
                )));
            };
            let projection =
                l.tensor::<2>(&format!("{key}.projection"), [map.nb_features(), map.dim()])?;
            attn.features = Some(map.with_projection(projection, seed, redraws));
        }
    }
    l.norm("norm", &mut model.norm)?;
    l.linear("output_layer", &mut model.output_layer)?;
    if l.used != export.tensors.len() {
        let mut names: Vec<&String> = export.tensors.keys().collect();
        names.sort();
        return Err(ModelError::Input(format!(
            "the checkpoint has {} tensors, the model used {}: it is from another model or version ({names:?})",
            export.tensors.len(),
            l.used
        )));
    }
    Ok(model)
}
