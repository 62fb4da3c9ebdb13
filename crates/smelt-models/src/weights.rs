//! The weight table: which GGUF tensors a model uses, with shapes checked at load.

use smelt_gguf::{GgmlType, Gguf};
use smelt_graph::{Graph, WeightId, WeightSpec};

use crate::ModelError;

/// One weight: its GGUF tensor name, its `[rows, cols]` shape (GGUF `[ne1, ne0]`) and type.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightEntry {
    pub name: String,
    pub shape: [usize; 2],
    pub dtype: GgmlType,
}

/// The weights of a model, indexed by [`WeightId`].
#[derive(Clone, Debug, Default)]
pub struct WeightTable {
    entries: Vec<WeightEntry>,
}

impl WeightTable {
    pub fn entries(&self) -> &[WeightEntry] {
        &self.entries
    }

    /// The weights as the backends load them (name and shape), in `WeightId` order.
    pub fn specs(&self) -> Vec<WeightSpec> {
        self.entries
            .iter()
            .map(|e| WeightSpec {
                name: e.name.clone(),
                shape: e.shape,
            })
            .collect()
    }

    pub fn get(&self, id: WeightId) -> &WeightEntry {
        &self.entries[id.0 as usize]
    }

    /// Require tensor `name` with ggml dims `dims` (ne0 first; trailing 1s in the file are ignored).
    pub(crate) fn require(
        &mut self,
        g: &Gguf,
        name: &str,
        dims: &[usize],
    ) -> Result<WeightId, ModelError> {
        self.optional(g, name, dims)?
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
    }

    /// Like [`WeightTable::require`] for a tensor that may be absent.
    pub(crate) fn optional(
        &mut self,
        g: &Gguf,
        name: &str,
        dims: &[usize],
    ) -> Result<Option<WeightId>, ModelError> {
        if let Some(i) = self.entries.iter().position(|e| e.name == name) {
            return Ok(Some(WeightId(i as u32)));
        }
        let Some(t) = g.tensor(name) else {
            return Ok(None);
        };
        let mut got: Vec<u64> = t.dims.clone();
        while got.len() > dims.len() && got.last() == Some(&1) {
            got.pop();
        }
        let want: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        if got != want {
            return Err(ModelError::Shape {
                name: name.to_string(),
                got: t.dims.clone(),
                want,
            });
        }
        let shape = match dims {
            [n] => [1, *n],
            [c, r] => [*r, *c],
            _ => {
                return Err(ModelError::Invalid(format!(
                    "tensor '{name}' must be 1-D or 2-D"
                )))
            }
        };
        self.entries.push(WeightEntry {
            name: name.to_string(),
            shape,
            dtype: t.dtype,
        });
        Ok(Some(WeightId(self.entries.len() as u32 - 1)))
    }

    /// Declare every weight to a new graph.
    pub(crate) fn graph(&self, n_tokens: usize) -> Graph {
        let mut g = Graph::new(n_tokens);
        for (i, e) in self.entries.iter().enumerate() {
            g.declare_weight(WeightId(i as u32), e.shape);
        }
        g
    }

    /// Elements of all weights (each tensor counted once).
    pub fn n_params(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| (e.shape[0] * e.shape[1]) as u64)
            .sum()
    }
}
