//! Genesis: train GPT-2-class language models from scratch.
//!
//! - [`model`]: model shapes and the flat parameter layout every other module shares.
//! - [`cpu`]: the pure-Rust reference ops, the GPT forward/backward built from them, and the KV-cache sampler.
//! - [`gpu`]: CUDA device discovery and the embedded kernels.
//! - [`data`]: tokenizer, token shards and the batch loader.
//! - [`train`]: optimizer, schedule, checkpoints and the training loop.
//! - [`safetensors`]: the safetensors container (read and write); [`hf`]: Hugging Face GPT-2 files built on it.

pub mod bench;
pub mod checkpoint;
pub mod cpu;
pub mod data;
pub mod doctor;
pub mod eval;
pub mod gpu;
pub mod hf;
pub mod llmc;
pub mod model;
pub mod nvcc_pins;
pub mod plot;
pub mod rng;
pub mod safetensors;
pub mod train;
pub mod util;
pub mod weights;
